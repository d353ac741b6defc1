"""A static file server that answers byte ranges, as a COG server (or object store) does.

Run in its own process (``python -m tests.http_range DIR LOG``): GDAL holds the GIL while
it reads a URL, so a server thread in the reading process would never answer. Prints the
port, then appends ``NAME:FIRST-LAST`` to LOG for every ranged GET.
"""

from __future__ import annotations

import functools
import http.server
import io
import os
import sys


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Answers ``Range: bytes=a-b`` with 206 and the bytes; logs each range."""

    log_path = ""

    def log_message(self, *args):  # quiet
        pass

    def send_head(self):
        spec = self.headers.get("Range")
        if not spec or not spec.startswith("bytes="):
            return super().send_head()
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self.send_error(404)
            return None
        size = os.path.getsize(path)
        start, _, end = spec[6:].split(",")[0].partition("-")
        first, last = int(start), min(int(end) if end else size - 1, size - 1)
        with open(self.log_path, "a") as log:
            log.write(f"{os.path.basename(path)}:{first}-{last}\n")
        with open(path, "rb") as f:
            f.seek(first)
            body = f.read(last - first + 1)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return io.BytesIO(body)


def main(directory: str, log_path: str) -> None:
    RangeHandler.log_path = log_path
    handler = functools.partial(RangeHandler, directory=directory)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
