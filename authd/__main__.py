import sys

from authd.cli.main import main

sys.exit(main())
