"""Fixtures shared by the tests: a clean environment, a real SQLite file in tmp_path, the app
under WebTest, and the reliability figures. What else the tests share is in support.py.

Markers (pytest -m): `servers` for the tests that start real Apache, nginx, Passenger or PHP
servers (README: the fast ones alone are `python3 -m pytest -m "not servers"`).
"""
import collections
import json
import os
import sqlite3
import sys
import time
from wsgiref.validate import validator

import pytest
import webtest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import receiver  # noqa: E402
from support import DONE, RETRY, rows  # noqa: E402,F401  (for the tests' imports)

SERVER_MODULES = ('test_deploy', 'test_attacks_frontends', 'test_forward_deploy',
                  'test_forward_consumer', 'test_inbox_browser')


def pytest_configure(config):
    config.addinivalue_line('markers', 'servers: starts real web servers (Debian packages)')


def pytest_collection_modifyitems(items):
    for item in items:
        if item.module.__name__.startswith(SERVER_MODULES) or item.get_closest_marker(
                'servers'):
            item.add_marker(pytest.mark.servers)


class TestApp(webtest.TestApp):
    """WebTest's client, but `status=` is checked with `expect_errors=True` too. (WebTest
    skips the check then; the receiver logs each refusal to wsgi.errors, which WebTest
    would otherwise take as a failure.)"""

    def do_request(self, req, status=None, expect_errors=None):
        res = webtest.TestApp.do_request(self, req, status=status, expect_errors=expect_errors)
        if expect_errors and status is not None:
            self._check_status(status, res)
        return res


@pytest.fixture(autouse=True)
def clean_environment(tmp_path, monkeypatch):
    """Every test runs with no FIBOSMS_* setting of the shell and tmp_path as its home, so
    that no settings file or database of the developer's is ever read: the default data
    folder is tmp_path/fibosms-data."""
    for name in [n for n in os.environ if n.startswith('FIBOSMS_')]:
        monkeypatch.delenv(name)
    monkeypatch.setenv('HOME', str(tmp_path))


@pytest.fixture
def db(tmp_path):
    """The default database, which does not exist yet, in the default data folder, which does
    not either: tmp_path/fibosms-data/messages.sqlite3 (tmp_path is the home)."""
    return str(tmp_path / 'fibosms-data' / 'messages.sqlite3')


@pytest.fixture
def make_client(db):
    """make_client(**settings) -> a WebTest client of make_app(db=db, **settings), lint on and
    wrapped in wsgiref.validate too; `extra_environ` sets the WSGI environ of every request.
    Its settings file is the default one, settings.env beside the database, if a test wrote it
    (`write_settings`)."""
    def make(extra_environ=None, **settings):
        settings.setdefault('db', db)
        app = validator(receiver.make_app(**settings))
        environ = {'REMOTE_ADDR': '127.0.0.1'}
        environ.update(extra_environ or {})
        return TestApp(app, lint=True, extra_environ=environ)
    return make


@pytest.fixture
def client(make_client):
    """A client of the app with no token, no allowlist and no hook."""
    return make_client()


def write_settings(db, *lines):
    """Write settings.env beside `db` (its folder made 0700), mode 600: `lines` in it."""
    folder = os.path.dirname(db)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    path = os.path.join(folder, 'settings.env')
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, 'w', encoding='utf-8') as f:
        f.write(''.join(line + '\n' for line in lines))
    return path


# -- The reliability figures ------------------------------------------------------------------

FIGURES = ('requests', 'answered_2', 'duplicates', 'kills', 'faults', 'hostile_inputs',
           'lost')


class Figures:
    """What the reliability tests did, added up through the `figures` fixture and printed at
    the end of the run under "reliability figures" (docs/RELIABILITY.md reports them):
    requests sent, answers of 2 then looked for in the database, duplicates pushed, kill -9s,
    faults injected, hostile inputs, and guids answered 2 but missing (lost)."""

    name = 'fibosms-reliability-figures'

    def __init__(self, config):
        self.config = config
        self.counts = collections.Counter(dict.fromkeys(FIGURES, 0))
        self.started = time.time()

    def pytest_terminal_summary(self, terminalreporter):
        data = dict(self.counts)
        data.update(python=sys.version.split()[0], sqlite=sqlite3.sqlite_version,
                    seconds=round(time.time() - self.started, 1))
        if getattr(self.config, 'cache', None) is not None:
            self.config.cache.set('reliability/figures', data)
        terminalreporter.section('reliability figures')
        terminalreporter.write_line(json.dumps(data, sort_keys=True))


@pytest.fixture
def figures(request):
    """The run's Counter of FIGURES; add to it what the test did."""
    manager = request.config.pluginmanager
    plugin = manager.get_plugin(Figures.name)
    if plugin is None:
        plugin = Figures(request.config)
        manager.register(plugin, Figures.name)
    return plugin.counts
