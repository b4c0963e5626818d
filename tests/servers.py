"""Real peers for tests, on loopback ports the OS picks: a threaded HTTP server and an S3-compatible server (moto).
Each is a context manager that stops its server when the block ends, also when a test fails."""
from __future__ import annotations

import contextlib
import threading
from http.server import ThreadingHTTPServer


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a handler still sleeping (a timeout test) does not hold up the shutdown

    def handle_error(self, request, client_address):  # a client that gave up (a timeout) is expected, not a failure
        pass


@contextlib.contextmanager
def http_server(handler):
    "Serve `handler` (a request-handler class or factory) on 127.0.0.1 and a free port until the block ends; yield its URL"
    srv = _Server(("127.0.0.1", 0), handler)  # port 0: the OS picks a free port and binds it at once, no race
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try: yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(10)


@contextlib.contextmanager
def s3_server():
    "Run moto's S3-compatible server on 127.0.0.1 and a free port until the block ends; yield its endpoint URL"
    from moto.server import ThreadedMotoServer
    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()  # returns once the server is bound
    try:
        host, port = srv.get_host_and_port()
        yield f"http://{host}:{port}"
    finally: srv.stop()
