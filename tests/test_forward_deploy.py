"""Forwarding in real deployments: a push through Apache, with mod_wsgi (the shipped
deploy/apache-mod_wsgi.conf, its forwarding lines switched on) and with CGI (deploy/cgi/,
receiver.cgi's FORWARD_ lines set), forwarded to deploy/consumer.php under php -S;
`python3 receiver.py` run as a CGI process forwarding within its own process; and kill -9 of
the small server while a forward is in flight."""
import base64
import os
import pwd
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

import pytest

import oracle
import servers
from application import Application, Consumer, free_port
from conftest import DONE, RETRY, ROOT, rows
from servers import PHONE, TOKEN, VIETNAMESE
from test_reliability_common import Server, push, run_cgi

SECRET = 'whsec_' + base64.b64encode(bytes(range(80, 112))).decode()


@pytest.fixture(scope='module')
def consumer_folder():
    folder = tempfile.mkdtemp(prefix='fibosms-consumer-')
    yield folder
    import shutil
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope='module')
def consumer(consumer_folder):
    """deploy/consumer.php under php -S, shared by this module's Apache tests."""
    server = Consumer(SECRET, os.path.join(consumer_folder, 'data', 'consumer.sqlite3'),
                      os.path.join(consumer_folder, 'php.log'))
    yield server
    server.stop()


@pytest.fixture(scope='module')
def site(consumer):
    """The shipped mod_wsgi site with its forwarding lines on, pointed at the consumer."""
    ws = servers.Workspace('forward')
    apache = None
    try:
        host = '<Directory %s>\n    Require all granted\n</Directory>\n' % ws.www
        config = servers.mod_wsgi_config(ws, [
            ('#SetEnv FIBOSMS_FORWARD_URL https://app.example.com/fibosms/consumer.php',
             'SetEnv FIBOSMS_FORWARD_URL %s' % consumer.url),
            ('#SetEnv FIBOSMS_FORWARD_SECRET whsec_change-me',
             'SetEnv FIBOSMS_FORWARD_SECRET %s' % SECRET),
        ])
        apache = servers.Apache(ws, ['wsgi', 'headers', 'reqtimeout'], host + config).start()
        root = 'https://127.0.0.1:%d/' % apache.port
        site = servers.Site(base=root + 'fibosms/', db=ws.db, cafile=ws.cert, folder_url=None,
                            access_log=lambda: ws.log('fibosms_access.log'))
        site.error_log = lambda: ws.log('fibosms_error.log') + ws.log('error.log')
        yield site
    finally:
        if apache is not None:
            apache.stop()
        ws.remove()


def test_apache_mod_wsgi_push_is_forwarded_to_the_php_consumer(site, consumer):
    """A Vietnamese push through Apache is answered 2 once consumer.php has handled it."""
    guid, response = site.push()
    assert (response.status, response.body) == (200, DONE), (response, site.error_log(),
                                                             consumer.log())
    assert (guid, PHONE, VIETNAMESE) in [row[:3] for row in consumer.rows('sms')]
    [row] = servers.stored(site.db, guid)
    assert (row['state'], row['hook_runs']) == ('processed', 1)


def test_apache_mod_wsgi_consumer_down_answers_1_then_retry_forwards(site, consumer,
                                                                      consumer_folder):
    """With the application down the push gets 1 and one log line naming host and error;
    once it is back, the gateway's retry is forwarded and answered 2."""
    consumer.stop()
    try:
        guid, response = site.push(message='down')
        assert (response.status, response.body) == (503, RETRY), response
    finally:
        consumer.__init__(SECRET, consumer.db, os.path.join(consumer_folder, 'php2.log'),
                          port=consumer.port)
    [row] = servers.stored(site.db, guid)
    assert row['state'] == 'failed'
    lines = [line for line in site.error_log().splitlines() if guid in line]
    assert len(lines) == 1, site.error_log()
    assert 'forward to 127.0.0.1:%d: ConnectionRefusedError' % consumer.port in lines[0]
    for private in ('down', PHONE, SECRET[6:], TOKEN):
        assert private not in site.error_log()
    _, response = site.push(message='down', guid=guid)
    assert (response.status, response.body) == (200, DONE), response
    assert guid in [row[0] for row in consumer.rows('sms')]


@pytest.fixture(scope='module')
def shared_host(consumer):
    """deploy/cgi/ on Apache with mod_cgid, receiver.cgi's FORWARD_ lines set to the consumer."""
    from test_deploy_apache_cgi import HOST_CONFIG, upload
    ws = servers.Workspace('forward-cgi')
    apache = None
    try:
        folder = upload(ws, ws.www, pwd.getpwnam(ws.user))
        ws.write(os.path.join(folder, 'receiver.cgi'), servers.cgi_script(ws.app, ws.db, [
            ('FORWARD_URL = None', 'FORWARD_URL = %r' % consumer.url),
            ('FORWARD_SECRET = None', 'FORWARD_SECRET = %r' % SECRET),
        ]), mode=0o755)
        apache = servers.Apache(ws, ['cgid'], HOST_CONFIG.format(run=ws.run, www=ws.www))
        apache.start()
        root = 'http://127.0.0.1:%d/fibosms/' % apache.port
        site = servers.Site(base=root + 'receiver.cgi/', db=ws.db, folder_url=None,
                            access_log=lambda: ws.log('error.log'))
        site.error_log = lambda: ws.log('error.log')
        yield site
    finally:
        if apache is not None:
            apache.stop()
        ws.remove()


def test_apache_cgi_push_is_forwarded_to_the_php_consumer(shared_host, consumer):
    """A push to the shared-hosting set-up, with forwarding set in receiver.cgi, reaches
    consumer.php before it is answered 2; the error log holds nothing."""
    guid, response = shared_host.push()
    assert (response.status, response.body) == (200, DONE), (response,
                                                             shared_host.error_log())
    assert (guid, PHONE, VIETNAMESE) in [row[:3] for row in consumer.rows('sms')]
    assert servers.stored(shared_host.db, guid)[0]['state'] == 'processed'
    assert guid not in shared_host.error_log()


# -- receiver.py as a CGI process -------------------------------------------------------------

def test_cgi_push_is_forwarded_within_its_process(db, tmp_path):
    """receiver.py run as CGI forwards to consumer.php before it answers: a Windows-1258
    message arrives there as its text, and the gateway gets 2."""
    consumer = Consumer(SECRET, str(tmp_path / 'c' / 'consumer.sqlite3'),
                        str(tmp_path / 'php.log'))
    try:
        # Raw bytes, as a web server passes them (os.fsdecode: the environment gets them back)
        query = os.fsdecode(b'guid=g-cgi&phone=0912345678&message=Ch\xe0o+b\xe9n+Vi\xea\xf2t')
        settings = {'FIBOSMS_FORWARD_URL': consumer.url, 'FIBOSMS_FORWARD_SECRET': SECRET}
        assert run_cgi(db, query, extra=settings) == (200, DONE, ''), consumer.log()
        [sms] = consumer.rows('sms')
        assert sms[:3] == ('g-cgi', '0912345678', 'Chào bén Vi\u00ea\u0323t')
        assert rows(db)[0]['charset'] == 'cp1258'
    finally:
        consumer.stop()


def test_cgi_push_with_the_application_down_answers_1(db):
    """A CGI push whose forward is refused answers 503 <Status>1</Status>, one log line."""
    port = free_port()
    status, body, err = run_cgi(db, 'guid=g-1&phone=0912345678&message=hi',
                                extra={'FIBOSMS_FORWARD_URL': 'http://127.0.0.1:%d/' % port})
    assert (status, body) == (503, RETRY)
    assert err.splitlines() == ["fibosms-receiver: 503 hook failed: forward to 127.0.0.1:%d:"
                                " ConnectionRefusedError (guid 'g-1')" % port]
    assert rows(db)[0]['state'] == 'failed'


def test_cgi_push_to_a_hung_application_answers_1_at_the_forward_timeout(db):
    """An application that never answers: the CGI push gets 503 <Status>1</Status> after
    forward.TIMEOUT, before the hook's 20 s, and the row is failed, its claim released."""
    import forward
    import receiver
    app = Application()
    app.hang = 60
    try:
        start = time.monotonic()
        code, body, err = run_cgi(db, 'guid=g-1&phone=0912345678&message=hi',
                                  extra={'FIBOSMS_FORWARD_URL': app.url,
                                         'FIBOSMS_FORWARD_SECRET': SECRET})
        elapsed = time.monotonic() - start
    finally:
        app.stop()
    assert (code, body) == (503, RETRY)
    assert forward.TIMEOUT <= elapsed < receiver.HANDLER_TIMEOUT
    assert 'no answer within %g s' % forward.TIMEOUT in err
    [row] = rows(db)
    assert (row['state'], row['claimed_until']) == ('failed', None)
    assert oracle.verify(SECRET, [(r.headers, r.body) for r in app.requests]) == ['ok']


# -- kill -9 while a forward is in flight -----------------------------------------------------

def expire_claim(db, guid):
    """Move the claim's end into the past, as CLAIM_SECONDS passing would."""
    conn = sqlite3.connect(db)
    with conn:
        conn.execute('UPDATE messages SET claimed_until = ? WHERE guid = ?',
                     (time.time() - 1, guid))
    conn.close()


def kill_during_forward(db, tmp_path, app, guid):
    """Push `guid` to a server forwarding to `app` (which hangs), kill -9 the server once the
    forward has arrived; return the application's request."""
    app.hang = 60
    env = {'FIBOSMS_FORWARD_URL': app.url, 'FIBOSMS_FORWARD_SECRET': SECRET}
    server = Server(db, str(tmp_path / 'server.log'), env)
    answers = []
    try:
        query = 'message=kill+test&phone=0912345678&guid=%s' % guid
        pusher = threading.Thread(target=lambda: answers.append(push(server.port, query)))
        pusher.start()
        assert app.arrived.wait(10), server.log()
        server.kill()
        pusher.join(30)
    finally:
        server.stop()
    assert answers and answers[0][1] != DONE, answers
    [row] = rows(db)
    assert (row['guid'], row['state']) == (guid, 'processing')
    assert row['claimed_until'] > time.time()
    app.release.set()
    app.hang = 0
    [request] = app.requests
    return request


def test_kill_9_during_a_forward_then_the_gateway_retry_forwards_again(db, tmp_path):
    """kill -9 of the server mid-forward: the message is in the database; after restart a
    retry within the claim gets 1, and once it expired the retry forwards it again with the
    same webhook-id and is answered 2."""
    app = Application()
    try:
        first = kill_during_forward(db, tmp_path, app, 'g-kill')
        env = {'FIBOSMS_FORWARD_URL': app.url, 'FIBOSMS_FORWARD_SECRET': SECRET}
        with Server(db, str(tmp_path / 'server2.log'), env) as server:
            query = 'message=kill+test&phone=0912345678&guid=g-kill'
            assert push(server.port, query) == (503, RETRY)
            assert len(app.requests) == 1
            expire_claim(db, 'g-kill')
            assert push(server.port, query) == (200, DONE)
        second = app.requests[1]
        assert first.headers['webhook-id'] == second.headers['webhook-id'] == 'g-kill'
        [row] = rows(db)
        assert (row['state'], row['deliveries']) == ('processed', 3)
        assert oracle.verify(SECRET, [(r.headers, r.body) for r in app.requests]) == ['ok'] * 2
    finally:
        app.stop()


def test_kill_9_during_a_forward_then_storage_retry_forwards_again(db, tmp_path):
    """kill -9 of the server mid-forward: once the claim expired, `storage.py retry` forwards
    the message again with the same webhook-id."""
    app = Application()
    try:
        first = kill_during_forward(db, tmp_path, app, 'g-kill')
        expire_claim(db, 'g-kill')
        env = {k: v for k, v in os.environ.items() if not k.startswith('FIBOSMS_')}
        env.update(FIBOSMS_FORWARD_URL=app.url, FIBOSMS_FORWARD_SECRET=SECRET)
        done = subprocess.run(
            [sys.executable, os.path.join(ROOT, 'storage.py'), '--db', db, 'retry'], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        assert (done.returncode, done.stdout) == (0, b'g-kill processed\n'), done.stderr
        assert app.requests[1].headers['webhook-id'] == first.headers['webhook-id']
        assert rows(db)[0]['state'] == 'processed'
        assert oracle.verify(SECRET, [(r.headers, r.body) for r in app.requests]) == ['ok'] * 2
    finally:
        app.stop()
