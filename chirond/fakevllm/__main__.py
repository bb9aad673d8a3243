"""`python -m chirond.fakevllm ...` is `chirond fake-vllm ...` without the rest of the CLI."""

import argparse
import sys

from chirond.fakevllm.server import DESCRIPTION, add_arguments, main

parser = argparse.ArgumentParser(prog="chirond fake-vllm", description=DESCRIPTION)
add_arguments(parser)
sys.exit(main(parser.parse_args()))
