"""Run a SplitFed server from a run configuration (what `splitfed server` does).

python examples/run_server.py --config examples/run.toml [--resume]
"""

import argparse
import logging
import sys

from splitfed.config import load_config
from splitfed.server.runtime import Server

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="run configuration (TOML)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    server = Server(load_config(args.config), resume=args.resume)
    print(f"listening on {server.endpoint}", flush=True)
    sys.exit(server.serve())
