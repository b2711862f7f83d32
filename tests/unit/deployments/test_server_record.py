import json
import os
import socket

from deployments.server import recorded_server, server_file, serving_on


def test_make_serve_records_its_server_while_it_runs_and_prints_the_export_line(tmp_path, capsys):
    with serving_on(tmp_path, "http://127.0.0.1:4200/api") as path:
        assert path == server_file(tmp_path)
        assert json.loads(path.read_text())["api_url"] == "http://127.0.0.1:4200/api"
        assert json.loads(path.read_text())["pid"] == os.getpid()
        assert "export PREFECT_API_URL=http://127.0.0.1:4200/api" in capsys.readouterr().out
    assert not path.exists()


def test_a_recorded_server_that_does_not_answer_is_not_used(tmp_path):
    assert recorded_server(tmp_path) is None  # nothing recorded
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, not listening: the connection is refused
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/api"
        with serving_on(tmp_path, url):
            assert recorded_server(tmp_path, timeout=1) is None
    server_file(tmp_path).parent.mkdir(parents=True, exist_ok=True)
    server_file(tmp_path).write_text("{not json")
    assert recorded_server(tmp_path) is None


def test_make_serves_receiver_is_found_while_its_server_answers(tmp_path):
    """`ctflows land` sends the data-landed webhook to the receiver `make serve` records."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from deployments.server import recorded_webhook

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/api/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/api"
        with serving_on(tmp_path, url, announce=False):
            assert recorded_webhook(tmp_path) is None  # served without a receiver
        with serving_on(tmp_path, url, announce=False, webhook="http://127.0.0.1:8787"):
            assert recorded_webhook(tmp_path) == "http://127.0.0.1:8787"
        server.shutdown()
        with serving_on(tmp_path, url, announce=False, webhook="http://127.0.0.1:8787"):
            assert recorded_webhook(tmp_path, timeout=1) is None  # its server is gone
    finally:
        server.server_close()
