import sys

from authd.cli import main

sys.exit(main())
