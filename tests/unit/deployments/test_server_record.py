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
