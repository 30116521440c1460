"""A TCP probe run on a test host (`python3 -c PROBE '[[address, port], ...]'`), shared by the
firewall specs and the firewall's integration tests.

It connects to each (address, port) at once from the host, each bounded by 1 s, and prints a
JSON list: "open", "refused" (nothing listens: answered) or "timeout" (dropped). The peer's
kernel answers a SYN (SYN-ACK or RST) in milliseconds over the test network, however busy its
processes are; 1 s of silence is a drop, not a slow peer.
"""

PROBE = r"""
import json, socket, sys
from concurrent.futures import ThreadPoolExecutor
def probe(t):
    s = socket.socket(); s.settimeout(1.0)
    try:
        s.connect((t[0], t[1])); return "open"
    except ConnectionRefusedError:
        return "refused"
    except (socket.timeout, TimeoutError):
        return "timeout"
    except OSError as e:
        return f"error {e.errno}"
    finally:
        s.close()
targets = json.loads(sys.argv[1])
with ThreadPoolExecutor(max_workers=32) as pool:
    print(json.dumps(list(pool.map(probe, targets))))
"""
