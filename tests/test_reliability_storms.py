"""Duplicate storms: many clients at once pushing the same guids, through receiver.py's threaded
server (also with wsgiref.validate between server and app), parallel CGI processes, Apache
mod_wsgi in daemon mode (the shipped site with 2 processes of 5 threads, so that processes
meet at the database too) and Apache mod_cgid, each on one database.

What must hold after every storm: one row per guid, its `deliveries` equal to the pushes that
were counted (each answered 2, or with a hook also each "hook already running" or "hooks were
running" try again), every
answer a Status document, never a 500, and with a hook, the hook run once per guid.
"""
import http.client
import os
import random
import re
import ssl
import threading
from urllib.parse import urlencode
from wsgiref.validate import validator

import pytest

import receiver
import smallserver
from conftest import DONE
import support as servers
from support import (
    REQUEST_TIMEOUT, Server, answer_is_status_document, deliveries, integrity, push, run_cgi)

CLIENTS = 8                 # concurrent clients in a storm
HOOK = '''\
import os, time

def record(message):
    """Append the guid to the file named by FIBOSMS_TEST_HOOK_LOG, slowly."""
    time.sleep(0.02)   # a slow hook widens the window in which a duplicate arrives
    fd = os.open(os.environ['FIBOSMS_TEST_HOOK_LOG'], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, message['guid'].encode('utf-8') + b'\\n')
    finally:
        os.close(fd)
'''


def query(guid):
    return urlencode([('message', 'storm ' + guid), ('phone', '+84912345678'),
                      ('guid', guid)])


def storm(send, guids, clients=CLIENTS):
    """Every client pushes every guid once, each in its own random order, all at once;
    returns [(guid, status, body)] of every push."""
    answers, lock = [], threading.Lock()
    barrier = threading.Barrier(clients)

    def client(seed):
        order = list(guids)
        random.Random(seed).shuffle(order)
        barrier.wait(REQUEST_TIMEOUT)
        for guid in order:
            status, body = send(guid)
            with lock:
                answers.append((guid, status, body))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(len(guids) * REQUEST_TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), 'a client never finished'
    return answers


def settle(send, answers, guids, tries=5):
    """Push again each guid never answered 2 (as the gateway would), up to `tries` times."""
    for _ in range(tries):
        missing = set(guids) - {g for g, _, body in answers if body == DONE}
        if not missing:
            break
        answers.extend((g,) + tuple(send(g)) for g in sorted(missing))
    return answers


def check_storm(db, answers, guids, figures, counted=None):
    """The storm's invariants; `counted(guid)` is how many deliveries each guid should show
    (default: its 200 answers)."""
    bad = [a for a in answers if not answer_is_status_document(a[1], a[2])]
    assert not bad, 'answers that are not Status documents: %r' % bad[:5]
    assert {a[1] for a in answers} <= {200}, 'unexpected codes'
    stored = deliveries(db)
    assert set(stored) == set(guids), 'guids stored differ from guids pushed'
    for guid in guids:
        want = counted(guid) if counted else sum(
            1 for g, _, body in answers if g == guid and body == DONE)
        assert stored[guid] == want, (guid, stored[guid], want)
    assert integrity(db) == 'ok'
    figures['requests'] += len(answers)
    figures['answered_2'] += sum(1 for a in answers if a[1] == 200)
    figures['duplicates'] += len(answers) - len(guids)


def test_threaded_server_storm_stores_each_guid_once(tmp_path, figures):
    """8 clients pushing the same 60 guids through the threaded server: one row each."""
    db = str(tmp_path / 'data' / 'messages.sqlite3')
    guids = ['srv-%03d' % n for n in range(60)]
    with Server(db, str(tmp_path / 'server.log')) as server:
        def send(guid):
            return push(server.port, query(guid))
        answers = settle(send, storm(send, guids), guids)
        assert 'Traceback' not in server.log()
    check_storm(db, answers, guids, figures)


@pytest.fixture
def validated_server(db):
    """smallserver.make_server on 127.0.0.1, in a thread, serving the app under wsgiref.validate:
    yields its port. A breach of PEP 3333 raises in the app and comes back as a 500."""
    server = smallserver.make_server('127.0.0.1', 0, validator(receiver.make_app(db=db)))
    thread = threading.Thread(target=server.serve_forever, kwargs={'poll_interval': 0.05})
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_storm_through_wsgiref_validate_on_a_real_server_keeps_pep_3333(validated_server, db,
                                                                        figures):
    """The same storm with wsgiref.validate between server and app: no breach, one row each."""
    guids = ['pep-%03d' % n for n in range(30)]

    def send(guid):
        return push(validated_server, query(guid))
    answers = settle(send, storm(send, guids), guids)
    check_storm(db, answers, guids, figures)


def test_threaded_server_storm_runs_the_hook_once_per_guid(tmp_path, figures):
    """With a slow hook, a storm of duplicates runs it exactly once per guid."""
    db = str(tmp_path / 'data' / 'messages.sqlite3')
    hook_log = tmp_path / 'hook.log'
    (tmp_path / 'reliability_hook.py').write_text(HOOK)
    guids = ['hook-%03d' % n for n in range(25)]
    env = {'FIBOSMS_HANDLER': 'reliability_hook:record', 'PYTHONPATH': str(tmp_path),
           'FIBOSMS_TEST_HOOK_LOG': str(hook_log)}
    with Server(db, str(tmp_path / 'server.log'), env) as server:
        def send(guid):
            return push(server.port, query(guid))
        answers = settle(send, storm(send, guids), guids)
        log = server.log()
    busy = re.findall(r"answered 1 \(HTTP 200\): hook (?:already running for this guid|not"
                      r" started: \d+ hooks were running.*? retried later) \(guid '([^']+)'\)",
                      log)

    def counted(guid):  # a try again "already running" or "full" is counted too, by design
        return busy.count(guid) + sum(1 for g, _, b in answers if g == guid and b == DONE)

    check_storm(db, answers, guids, figures, counted)
    runs = hook_log.read_text().split()
    assert sorted(runs) == sorted(guids), 'the hook ran other than once per guid'


def test_parallel_cgi_processes_store_each_guid_once(tmp_path, figures):
    """6 CGI processes at a time pushing the same 16 guids: one row each."""
    db = str(tmp_path / 'data' / 'messages.sqlite3')
    guids = ['cgi-%02d' % n for n in range(16)]

    def send(guid):
        code, body, err = run_cgi(db, query(guid))
        assert 'Traceback' not in err, err
        return code, body

    answers = settle(send, storm(send, guids, clients=6), guids)
    check_storm(db, answers, guids, figures)


def test_parallel_cgi_processes_run_the_hook_once_per_guid(tmp_path, figures):
    """6 CGI processes at a time with a slow hook: it runs once per guid across processes."""
    db = str(tmp_path / 'data' / 'messages.sqlite3')
    hook_log = tmp_path / 'hook.log'
    (tmp_path / 'reliability_hook.py').write_text(HOOK)
    guids = ['cgihook-%02d' % n for n in range(10)]
    env = {'FIBOSMS_HANDLER': 'reliability_hook:record', 'PYTHONPATH': str(tmp_path),
           'FIBOSMS_TEST_HOOK_LOG': str(hook_log)}
    busy = []

    def send(guid):
        code, body, err = run_cgi(db, query(guid), extra=env)
        assert 'Traceback' not in err, err
        if 'hook already running' in err or 'hooks were running' in err:
            busy.append(guid)
        return code, body

    answers = settle(send, storm(send, guids, clients=6), guids)
    check_storm(db, answers, guids, figures, lambda guid: busy.count(guid) + sum(
        1 for g, _, b in answers if g == guid and b == DONE))
    assert sorted(hook_log.read_text().split()) == sorted(guids)


# -- Apache --------------------------------------------------------------------------------

def apache_send(port, path, cafile=None):
    """send(guid) -> (status, body) to a private Apache on 127.0.0.1:port."""
    context = ssl.create_default_context(cafile=cafile) if cafile else None

    def send(guid):
        if context:
            conn = http.client.HTTPSConnection('127.0.0.1', port, timeout=REQUEST_TIMEOUT,
                                               context=context)
        else:
            conn = http.client.HTTPConnection('127.0.0.1', port, timeout=REQUEST_TIMEOUT)
        try:
            conn.request('GET', path + '?' + query(guid))
            response = conn.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            return None, None
        finally:
            conn.close()
    return send


@pytest.fixture
def apache_mod_wsgi():
    """A private Apache with the shipped mod_wsgi site in daemon mode, its one process made
    two (x 8 threads) so that the storm also meets across processes: yields (send, workspace)."""
    front = servers.start('mod_wsgi', more=[('processes=1 threads=8', 'processes=2 threads=8')])
    yield apache_send(front.port, front.page, front.cafile), front.ws
    front.stop()


@pytest.fixture
def apache_cgi():
    """A private Apache running the shipped deploy/cgi files under mod_cgid: yields
    (send, workspace)."""
    front = servers.start('cgi')
    yield apache_send(front.port, front.page), front.ws
    front.stop()


def test_apache_mod_wsgi_daemon_storm_stores_each_guid_once(apache_mod_wsgi, figures):
    """8 clients pushing the same 60 guids through mod_wsgi daemon processes: one row each."""
    send, ws = apache_mod_wsgi
    guids = ['wsgi-%03d' % n for n in range(60)]
    answers = settle(send, storm(send, guids), guids)
    assert 'Traceback' not in ws.log('error.log')
    check_storm(ws.db, answers, guids, figures)


def test_apache_cgi_storm_stores_each_guid_once(apache_cgi, figures):
    """8 clients pushing the same 12 guids through Apache's parallel CGI processes."""
    send, ws = apache_cgi
    guids = ['acgi-%02d' % n for n in range(12)]
    answers = settle(send, storm(send, guids), guids)
    assert 'Traceback' not in ws.log('error.log')
    check_storm(ws.db, answers, guids, figures)
