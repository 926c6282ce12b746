import sys

from tdmq_beam.emulator.cli import main

sys.exit(main())
