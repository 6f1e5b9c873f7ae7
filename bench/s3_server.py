"""moto's S3 server on 127.0.0.1 with a fixed delay before each response: a stand-in for a bucket's latency.

``python -m bench.s3_server PORT DELAY_MS`` serves until killed (threaded: requests wait concurrently, as on a real
object store). Only for benchmarks; the tests use moto without delay.
"""

from __future__ import annotations

import sys
import time


def serve(port: int, delay_s: float) -> None:
    """Serve moto's S3 API on ``127.0.0.1:port``, each request answered ``delay_s`` late."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    app = DomainDispatcherApplication(create_backend_app)

    def delayed(environ, start_response):
        time.sleep(delay_s)
        return app(environ, start_response)

    make_server("127.0.0.1", port, delayed, threaded=True, request_handler=MotoRequestHandler).serve_forever()


if __name__ == "__main__":
    serve(int(sys.argv[1]), float(sys.argv[2]) / 1000)
