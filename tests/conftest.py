"""Shared by every test: DVC binds its console log handlers to ``sys.stdout`` and ``sys.stderr``
when it is first imported (``dvc/__init__.py`` calls ``dvc.logger.setup()``). Imported first
inside a test that captures output (``capsys``), they would keep writing to that test's closed
buffers and fail every later test that makes DVC log. Import it here, before any capture."""

import dvc  # noqa: F401
