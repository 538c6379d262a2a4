"""Run SplitFed client K from a run configuration (what `splitfed client` does).

python examples/run_client.py --config examples/run.toml --client-id 0
"""

import argparse

from splitfed.client.runtime import Client
from splitfed.config import load_config

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="run configuration (TOML)")
    p.add_argument("--client-id", type=int, required=True, help="K in [0, data.clients)")
    args = p.parse_args()
    client = Client(load_config(args.config), args.client_id)
    summary = client.run(progress=lambda rnd, step, loss: print(f"round {rnd} step {step} loss {loss:.3f}"))
    print({k: v for k, v in summary.items() if k != "losses"})
