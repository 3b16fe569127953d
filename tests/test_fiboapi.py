"""FiboSMS's API client (fiboapi.py) against the emulator (deploy/fibosms_emulator.py) on
127.0.0.1: both answer forms, every code of the guide, the guide's padding and changing names,
its dates, hostile and broken answers within bounds, https. Also what the other test_fiboapi
files share: the emulator fixture, the settings, the commands run as real processes."""
import os
import socket
import subprocess
import sys
import time

import pytest

import fiboapi
import support
from conftest import ROOT, write_settings

sys.path.insert(0, support.DEPLOY)
import fibosms_emulator  # noqa: E402

CLIENT_NO, PASSWORD = 'CL1234', 'Pw-fibo-7c2e-secret'     # found in no log, row or output
TEXT = 'Tôi muốn đặt 2 vé, giá 1+1=2 & ưu đãi 😊'


@pytest.fixture
def emulator():
    """The emulator of FiboSMS, no page yet; its pushes 0.01 s apart."""
    emu = fibosms_emulator.Emulator(client_pass=PASSWORD, wait=0.01, push_timeout=5).start()
    yield emu
    emu.stop()


def client(emu, timeout=fiboapi.TIMEOUT, password=PASSWORD):
    return fiboapi.Client(emu.url, CLIENT_NO, password, timeout)


def api_settings(emu, *more):
    """The settings lines of a receiver that uses `emu` as FiboSMS's API, and `more`."""
    return ['FIBOSMS_TOKEN=' + support.TOKEN, 'FIBOSMS_API_URL=' + emu.url,
            'FIBOSMS_API_CLIENT_NO=' + CLIENT_NO, 'FIBOSMS_API_CLIENT_PASS=' + PASSWORD,
            'FIBOSMS_API_SERVICE_TYPE=1'] + list(more)


def configure(db, emu, *more):
    """Write the settings file beside `db` for `emu`, and `more` lines."""
    return write_settings(db, *api_settings(emu, *more))


def run(db, *args, **kwargs):
    """``python3 storage.py ARGS`` as the receiver's user would run it, the settings file found
    in HOME/fibosms-data (the folder of `db`): (exit code, stdout, stderr)."""
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'storage.py')] + list(args),
                          env=support.clean_env(HOME=os.path.dirname(os.path.dirname(db))),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd='/',
                          timeout=kwargs.get('timeout', 60))
    return done.returncode, done.stdout.decode('utf-8'), done.stderr.decode('utf-8')


def start(db, *args):
    """``python3 storage.py ARGS`` started, not waited for."""
    return subprocess.Popen([sys.executable, os.path.join(ROOT, 'storage.py')] + list(args),
                            env=support.clean_env(HOME=os.path.dirname(os.path.dirname(db))),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd='/')


def assert_no_secret(*texts):
    """None of `texts` holds the API password or the page's secret."""
    for text in texts:
        assert PASSWORD not in text and support.TOKEN not in text, text


# -- Reading both forms -----------------------------------------------------------------------

@pytest.mark.parametrize('form', ['asmx', 'guide'])
def test_both_answer_forms_give_the_same_sms(emulator, form):
    """The ASP.NET form (escaped XML in <string xmlns=tempuri>) and the guide's (XML inside
    <string>, padded values, 'Message' and 'CreatedDate') read as the same fields."""
    emulator.form = form
    created = float(int(time.time()) - 60)
    emulator.receive('0912345678', TEXT, status=5, created=created)
    [sms] = [fiboapi.read_sms(row) for row in client(emulator).comming_sms(60)]
    assert sms == {'id': '62', 'phone': '+84912345678', 'text': TEXT, 'state': 5,
                   'createddate': time.strftime('%Y-%m-%dT%H:%M:%S+07:00',
                                                time.gmtime(created + 7 * 3600)),
                   'created': created, 'service_type_id': '229',
                   'service_type_name': '8022(FIBO)'}


@pytest.mark.parametrize('form', ['asmx', 'guide'])
def test_the_list_of_the_last_minutes(emulator, form):
    """GetCommingSMSList lists the SMS of the window only, each with its state."""
    emulator.form = form
    now = time.time()
    emulator.receive('0912345678', 'old', status=2, created=now - 7200)
    emulator.receive('0912345679', 'new', status=5, created=now - 60)
    listed = [fiboapi.read_sms(row) for row in client(emulator).comming_sms(60)]
    assert [(s['text'], s['state']) for s in listed] == [('new', 5)]
    assert abs(listed[0]['created'] - (now - 60)) < 1
    assert [s['text'] for s in map(fiboapi.read_sms, client(emulator).comming_sms(180))] == [
        'old', 'new']


def test_the_request_carries_the_account_and_its_parameters(emulator):
    """Each call is a GET of <url>/<Function> with clientNo and clientPass, then its own."""
    assert client(emulator).send('0912345678', TEXT, 'sms-1', '1').code == 200
    assert emulator.calls == [('SendSMS', {'clientNo': CLIENT_NO, 'phoneNumber': '0912345678',
                                           'smsMessage': TEXT, 'smsGUID': 'sms-1',
                                           'serviceType': '1'}, True)]
    assert client(emulator).send('0912345678', 'x', 's', '1', brand='SHOP').code == 200
    assert emulator.outbox[-1]['function'] == 'SendMaskedSMS'
    assert emulator.outbox[-1]['sender_name'] == 'SHOP'


def test_another_namespace_is_read(emulator):
    """ASP.NET's <string> in a namespace other than tempuri.org reads the same."""
    emulator.namespace = 'http://center.fibosms.com/'
    emulator.receive('0912345678', 'hi', status=5)
    assert [r['message'] for r in client(emulator).comming_sms(60)] == ['hi']


@pytest.mark.parametrize('form', ['asmx', 'guide'])
@pytest.mark.parametrize('code', [100, 101, 102, 103, 104, 202, 200])
def test_every_code_of_the_guide_is_read(emulator, form, code):
    """An <SMS><Code> status, padded or not, gives its code."""
    emulator.form = form
    emulator.fault(code, 'SendSMS')
    assert client(emulator).send('0912345678', 'x', 's', '1').code == code


def test_the_codes_the_account_gives(emulator):
    """A wrong password is 100; a wrong number 101; a service type the account lacks 103;
    an empty balance 102: the emulator answers as the guide says."""
    assert client(emulator, password='wrong').send('0912345678', 'x', 's', '1').code == 100
    assert client(emulator).send('12', 'x', 's', '1').code == 101
    assert client(emulator).send('0912345678', 'x', 's', '7').code == 103
    emulator.balance = 0
    assert client(emulator).send('0912345678', 'x', 's', '1').code == 102
    with pytest.raises(fiboapi.ApiError, match=r'code wrong account \(100\)$'):
        client(emulator, password='wrong').comming_sms(60)


@pytest.mark.parametrize('fault', [301, 'empty'])
def test_no_sms_in_every_form_is_an_empty_list(emulator, fault):
    """<DocumentElement />, code 301 "No SMS!" and an empty <string> are no SMS."""
    assert client(emulator).comming_sms(60) == []
    emulator.fault(fault)
    assert client(emulator).comming_sms(60) == []


def test_an_answer_without_its_string_element_is_read(emulator):
    """The XML alone, with no <string> around it, reads as well."""
    emulator.receive('0912345678', 'hi', status=5)
    emulator.fault('unwrapped')
    assert [r['message'] for r in client(emulator).comming_sms(60)] == ['hi']


@pytest.mark.parametrize('body, rows, code, text', [
    (b'<string><DocumentElement /></string>', [], None, None),
    (b'<?xml version="1.0" encoding="utf-8"?>\r\n<string xmlns="http://tempuri.org/">'
     b'&lt;SMS&gt;&lt;Code&gt; 103&lt;/Code&gt;&lt;Message&gt; Service type is wrong! '
     b'&lt;/Message&gt;&lt;Time&gt;&lt;/Time&gt;&lt;/SMS&gt;</string>', None, 103,
     'Service type is wrong!'),
    (b'<string><SMS><CODE>0</CODE><MESSAGE>Nguyen Van A</MESSAGE></SMS></string>', None, 0,
     'Nguyen Van A'),
    (b'<string> www.Fibovietnam.com</string>', None, None, 'www.Fibovietnam.com'),
    (b'<int>25</int>', None, None, '25'),
    ('<string><NewDataSet><Table><Message>Xin chào</Message></Table></NewDataSet></string>'
     .encode('cp1258'), [{'message': 'Xin chào'}], None, None),
    ('<string><DocumentElement><SMSLIST><message>\x1b[2J &#x1B;ok</message></SMSLIST>'
     '</DocumentElement></string>'.encode('utf-16'), [{'message': '\ufffd[2J \ufffdok'}], None,
     None),
])
def test_answers_as_the_guide_prints_them(body, rows, code, text):
    """The guide's answers, its padding and changing case, another charset, a control
    character (read as U+FFFD: XML cannot carry it, and one SMS must not spoil the list)."""
    answer = fiboapi.parse(body)
    assert (answer.rows, answer.code, answer.text or None) == (rows, code, text)


@pytest.mark.parametrize('text, expected', [
    ('2009-04-22T16:37:00+07:00', 1240393020.0),
    (' 2009-04-22T16: 37:00+ 07:00', 1240393020.0),
    ('2009-04-22T16:37:00.123+0700', 1240393020.0),
    ('2009-04-22T16:37:00', 1240393020.0),
    ('2009-04-22T09:37:00Z', 1240393020.0),
    ('2009-04-22T04:37:00-05:00', 1240393020.0),
    ('22/04/ 2009(16:37:00)', None),
    ('2009-13-45T99:99:00+07:00', None),
    ('', None),
])
def test_dates(text, expected):
    """ISO 8601 with +07:00, spaces ignored; no zone: +07:00; anything else: None."""
    assert fiboapi.parse_date(text) == expected


# -- Bounds and hostile answers ---------------------------------------------------------------

@pytest.mark.parametrize('fault, says', [
    ('slow', 'no answer within 1 s'),
    ('trickle', 'no answer within 1 s'),
    ('huge', 'an answer over %d bytes' % fiboapi.MAX_ANSWER),
    ('truncated', 'not XML'),
    ('garbage', 'not XML'),
    ('doctype', 'a DTD or an entity: refused'),
    ('entity', 'a DTD or an entity: refused'),
    ('http500', 'HTTP 500'),
    ('close', 'no answer (RemoteDisconnected)'),
    ('redirect', 'HTTP 302'),
    ('html', 'no list nor status'),
])
def test_a_broken_or_hostile_answer_is_an_error_within_bounds(emulator, fault, says):
    """Each is an ApiError naming the function and the host, never the password, within the
    timeout (a watchdog ends an answer that trickles in); a DTD is refused unparsed."""
    emulator.slow = 20
    emulator.receive('0912345678', 'hi', status=5)
    emulator.fault(fault)
    started = time.monotonic()
    with pytest.raises(fiboapi.ApiError) as caught:
        client(emulator, timeout=1.0).comming_sms(60)
    assert time.monotonic() - started < 4
    error = caught.value
    assert says in error.summary and error.sent
    assert error.summary.startswith('FiboSMS GetCommingSMSList at 127.0.0.1:%d: '
                                    % emulator.server.server_address[1])
    assert_no_secret(str(error), repr(client(emulator)))


def test_no_connection_is_an_error_of_a_request_that_never_left():
    """A refused connection: ApiError with sent False (nothing of the request left)."""
    port = support.free_port()
    with pytest.raises(fiboapi.ApiError) as caught:
        fiboapi.Client('http://127.0.0.1:%d/Service.asmx' % port, CLIENT_NO, PASSWORD).send(
            '0912345678', 'x', 's', '1')
    assert not caught.value.sent
    assert 'no connection (ConnectionRefusedError)' in caught.value.summary


def test_a_server_that_never_answers_the_connection_is_bounded():
    """A listening socket that never accepts: the call ends at its timeout, sent False."""
    fillers = []
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        sock.listen(0)
        try:
            for _ in range(8):  # fill its queue, so that a connection waits for ever
                fillers.append(socket.socket())
                fillers[-1].setblocking(False)
                fillers[-1].connect_ex(sock.getsockname())
            started = time.monotonic()
            with pytest.raises(fiboapi.ApiError) as caught:
                fiboapi.Client('http://127.0.0.1:%d/S' % sock.getsockname()[1], CLIENT_NO,
                               PASSWORD, 1.0).comming_sms(60)
            assert time.monotonic() - started < 4
            assert 'within 1 s' in caught.value.summary
        finally:
            for filler in fillers:
                filler.close()


def test_https_checks_the_certificate(tmp_path, monkeypatch):
    """https:// verifies the certificate against the system's store: a self-signed one is
    refused before the request leaves (sent False); trusted (SSL_CERT_FILE), it is used."""
    cert = support.make_certificate(str(tmp_path))
    emu = fibosms_emulator.Emulator(client_pass=PASSWORD, cert=cert).start()
    try:
        emu.receive('0912345678', 'hi', status=5)
        with pytest.raises(fiboapi.ApiError) as caught:
            client(emu).comming_sms(60)
        assert not caught.value.sent and emu.calls == []
        monkeypatch.setenv('SSL_CERT_FILE', cert[0])
        assert [r['message'] for r in client(emu).comming_sms(60)] == ['hi']
    finally:
        emu.stop()


@pytest.mark.parametrize('url', ['ftp://center.fibosms.com/Service.asmx',
                                 'http://user:pw@center.fibosms.com/Service.asmx',
                                 'http://center.fibosms.com/Service.asmx?x=1',
                                 'http:///Service.asmx', 'http://center.fibosms.com:99999/',
                                 'http://center.fibosms.com/Service asmx', ''])
def test_an_api_url_that_cannot_work_is_a_setting_error(url):
    """FIBOSMS_API_URL must be http(s)://host[:port]/path; empty, it is FiboSMS's."""
    import receiver
    settings = {'FIBOSMS_API_URL': url, 'FIBOSMS_API_CLIENT_NO': CLIENT_NO,
                'FIBOSMS_API_CLIENT_PASS': PASSWORD}
    if not url:
        assert fiboapi.Client.from_settings(settings).where == 'center.fibosms.com'
        return
    with pytest.raises(receiver.SettingError, match='FIBOSMS_API_URL'):
        fiboapi.Client.from_settings(settings)


def test_the_account_must_be_set():
    import receiver
    with pytest.raises(receiver.SettingError, match='FIBOSMS_API_CLIENT_NO and'):
        fiboapi.Client.from_settings({'FIBOSMS_API_CLIENT_NO': CLIENT_NO})


# -- The emulator as a user runs it -----------------------------------------------------------

def test_the_emulator_plays_the_gateway_for_a_user(db, tmp_path):
    """``python3 deploy/fibosms_emulator.py --page URL``: an SMS typed on its input is pushed
    to the page (here the small server) and stored; the API serves it."""
    import receiver
    import smallserver
    import threading
    write_settings(db, 'FIBOSMS_TOKEN=' + support.TOKEN)
    page = smallserver.make_server('127.0.0.1', 0, receiver.make_app())
    threading.Thread(target=page.serve_forever, daemon=True).start()
    port = support.free_port()
    process = subprocess.Popen(
        [sys.executable, os.path.join(support.DEPLOY, 'fibosms_emulator.py'), '--page',
         'http://127.0.0.1:%d/%s' % (page.server_address[1], support.TOKEN), '--port',
         str(port), '--client-pass', PASSWORD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        env=support.clean_env())
    try:
        assert 'the API at http://127.0.0.1:%d/Service.asmx' % port in (
            process.stdout.readline().decode())
        process.stdin.write('0912345678 Xin chào\n'.encode())
        process.stdin.flush()
        lines = [process.stdout.readline().decode() for _ in range(3)]
        assert lines[1:] == ['SMS 62 from 0912345678\n', 'SMS 62: Confirmed, try 1\n']
        assert [(r['phone'], r['message']) for r in support.rows(db)] == [
            ('84912345678', 'Xin chào')]
        listed = fiboapi.Client('http://127.0.0.1:%d/Service.asmx' % port, CLIENT_NO,
                                PASSWORD).comming_sms(60)
        assert [fiboapi.read_sms(r)['state'] for r in listed] == [2]
    finally:
        support.stop_process(process)
        process.stdout.close()
        process.stdin.close()
        page.shutdown()
        page.server_close()


def test_the_owners_guide_states_the_figures_and_settings_the_code_uses():
    """docs/FIBOSMS_API.md's figures are the code's, and its table has every setting of the
    API and the replies."""
    import commands
    import fiboreply
    with open(os.path.join(ROOT, 'docs', 'FIBOSMS_API.md'), encoding='utf-8') as f:
        text = ' '.join(f.read().split())
    for figure in (
            '(%d, a day, by default; at most %d, six days' % (fiboapi.DEFAULT_MINUTES,
                                                             fiboapi.MAX_MINUTES),
            'within %d hours of the SMS\'s `createddate`' % (fiboapi.MATCH_WINDOW // 3600),
            'in the list within %d hours' % (2 * fiboapi.MATCH_WINDOW // 3600),
            'at most %d seconds in all' % fiboapi.TIMEOUT,
            'reads at most %d MiB' % (fiboapi.MAX_ANSWER // 1024 // 1024),
            'A reply is at most %d characters' % fiboreply.MAX_REPLY,
            '`FIBOSMS_REPLY_PER_DAY` (%d)' % fiboreply.DEFAULT_PER_DAY,
            '`FIBOSMS_REPLY_A_DAY` (%d)' % fiboreply.DEFAULT_A_DAY,
            '%d tries in all, for a day' % fiboreply.TRIES,
            'after %d days' % (fiboreply.FORGET_PHONE // 86400),
            'names it for %d days' % (fiboreply.UNKNOWN_FOR // 86400),
            'a run a minute later' if fiboapi.RECOVER_AFTER == 60 else '?'):
        assert figure in text
    assert fiboapi.MAX_MINUTES == 6 * 1440 < commands.MIN_PURGE_DAYS * 1440
    ours = [name for name in commands.SETTINGS if name.startswith(('FIBOSMS_API_',
                                                                  'FIBOSMS_REPLY'))]
    assert len(ours) == 9 and all('| `%s` |' % name in text for name in ours)
