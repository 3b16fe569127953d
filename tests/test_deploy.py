"""Each way of deploying, as README's steps leave it, on the real server it is written for:
deploy/cgi/ under Apache's mod_cgid (as Apache's user, and under suEXEC as the site's owner),
deploy/apache-mod_wsgi.conf, deploy/apache-passenger.conf with deploy/passenger_wsgi.py,
deploy/apache-reverse-proxy.conf and deploy/nginx-reverse-proxy.conf in front of the small
server started as deploy/fibosms-receiver.service says, and that server alone.

Every set-up gets the same checks (support.start builds them from the shipped files, changed
only on the lines they mark CHANGE and in their paths, the settings in the data folder's
settings.env). The checks a set-up alone has follow them.
"""
import http.client
import os
import pwd
import re
import ssl
import stat
import subprocess
import time

import pytest

import support
from support import DONE, PHONE, RETRY, TOKEN, VIETNAMESE, WRONG_TOKEN

SETUPS = ['cgi', 'suexec', 'mod_wsgi', 'passenger', 'apache_proxy', 'nginx', 'small_server']
MISTAKES = ('receiver.py', 'storage.py', 'settings.ini', '.env')   # uploaded by mistake


def decoys_in_the_cgi_folder(front_ws):
    def upload(folder):
        support.place_decoys(folder, front_ws)
        for name in MISTAKES:
            front_ws.copy(os.path.join(front_ws.app, 'receiver.py'),
                          os.path.join(folder, name), 0o644)
    return upload


@pytest.fixture(scope='module', params=SETUPS)
def site(request):
    """One set-up, shared by this module's tests: decoys in the folder it serves, and
    `forbidden` the URLs that must give nothing away."""
    ws = support.Workspace(request.param)
    try:
        if request.param in ('cgi', 'suexec'):
            front = support.start('cgi', ws, suexec=request.param == 'suexec',
                                  upload=decoys_in_the_cgi_folder(ws))
            root = 'http://127.0.0.1:%d/fibosms/' % front.port
            front.folder_url = root
            front.forbidden = [root + name for name in ('receiver.cgi', '.htaccess') + MISTAKES]
        else:
            support.place_decoys(ws.www, ws)
            grant = '<Directory %s>\n    Require all granted\n</Directory>\n' % ws.www
            front = support.start(request.param, ws, **(
                {'host': grant} if request.param in ('mod_wsgi', 'passenger', 'apache_proxy')
                else {}))
            scheme = 'https' if front.cafile else 'http'
            root = '%s://127.0.0.1:%d/' % (scheme, front.port)
            front.folder_url = None if request.param == 'small_server' else root
            front.forbidden = [root + 'receiver.py', root + 'fibosms/messages.sqlite3',
                               root + 'fibosms/fibosms-data/messages.sqlite3',
                               root + 'fibosms/%s/../messages.sqlite3' % TOKEN] + [
                root + 'fibosms/' + name for name in support.DECOYS]
    except BaseException:
        ws.remove()
        raise
    try:
        yield front
    finally:
        front.stop()


def access_logs(site):
    """Every log the set-up writes but the host's own access log (README: the CGI host's
    records whole URLs, which .htaccess cannot change)."""
    return ''.join(site.logs().values())


# -- What every set-up does -------------------------------------------------------------------

def test_vietnamese_push_is_stored_exactly(site):
    """A Vietnamese push is answered 200 <Status>2</Status> and stored character for
    character, in the data folder's database."""
    guid, response = site.push()
    assert (response.status, response.body) == (200, DONE), response
    assert response.headers['Content-Type'] == support.CONTENT_TYPE
    [row] = support.stored(site.db, guid)
    assert (row['message'], row['phone'], row['charset']) == (VIETNAMESE, PHONE, 'utf-8')


def test_duplicate_guid_is_stored_once(site):
    """The gateway's resend of a guid is answered 2 again and leaves one row."""
    guid, first = site.push()
    _, again = site.push(guid=guid)
    assert first.body == again.body == DONE, (first, again)
    [row] = support.stored(site.db, guid)
    assert row['deliveries'] == 2


def test_wrong_or_missing_secret_is_refused_with_403(site):
    """A wrong secret, or none, gets 403 <Status>1</Status> (or the front end's 404) and
    stores nothing; the receiver's log names the reason."""
    guid, response = site.push(page=site.page.replace(TOKEN, WRONG_TOKEN))
    assert (response.status, response.body) == (403, RETRY), response
    assert support.stored(site.db, guid) == []
    guid, response = site.push(page=site.page.replace('/' + TOKEN, ''))
    assert response.status in (403, 404) and response.body == RETRY, response
    assert support.stored(site.db, guid) == []
    assert 'answered 1 (HTTP 403): wrong or missing token' in site.ws.receiver_log()


def test_settings_file_reaches_the_app(site):
    """The secret comes from the data folder's settings.env (no SetEnv, no constant), and a
    change to the file counts from the next push, with no restart."""
    guid, response = site.push(message='settings')
    assert response.body == DONE, response
    assert len(support.stored(site.db, guid)) == 1
    other = 'Other-secret-for-the-file-' + support.new_guid()[-8:]
    try:
        site.ws.settings(replace=[('FIBOSMS_TOKEN=' + TOKEN, 'FIBOSMS_TOKEN=' + other)])
        _, response = site.push(message='old secret')
        assert response.status == 403, response
        _, response = site.push(message='new secret', page=site.page.replace(TOKEN, other))
        assert response.body == DONE, response
    finally:
        site.ws.settings()


def test_files_are_not_downloadable(site):
    """The database, its -wal, -shm and -journal files, the code and the settings: 403 or
    404, never a byte of them."""
    if site.folder_url:     # a folder the server serves, with place_decoys()'s files in it
        assert support.get(site.folder_url + 'hello.txt', site.cafile).status == 200
    for url in site.forbidden + ([site.folder_url + n for n in support.DECOYS]
                                 if site.folder_url else []):
        response = support.get(url, site.cafile)
        assert response.status in (403, 404), (url, response)
        assert support.SQLITE_MAGIC not in response.body, url
        assert TOKEN.encode() not in response.body, url


def test_logs_hold_no_query_string_nor_secret(site):
    """No log the set-up writes (access, error, the receiver's own) holds a query string, the
    secret, the phone or the text, whether the push is stored or refused."""
    guid, response = site.push(message='log check', phone='84987654321')
    assert response.body == DONE, response
    site.push(page=site.page.replace(TOKEN, WRONG_TOKEN))
    deadline = time.monotonic() + 5
    while '403' not in access_logs(site) and time.monotonic() < deadline:
        time.sleep(0.05)    # written after the answer
    log = access_logs(site)
    assert '403' in log, 'the pushes were not logged: %r' % log
    for secret in ('?message', 'message=', 'phone=', 'log check', 'log+check', guid, '84987654321', TOKEN,
                   WRONG_TOKEN):
        assert secret not in log, (secret, log)


def test_push_py_reports_success(site):
    """deploy/push.py against the page (--cafile for our test certificate) exits 0 and the
    push is stored."""
    guid = support.new_guid()
    code, output = support.run_push_py(site.url, '--phone', PHONE, '--message', VIETNAMESE,
                                       '--guid', guid, cafile=site.cafile)
    assert code == 0, output
    assert 'HTTP 200 <Status>2</Status>: stored' in output and 'OK:' in output, output
    assert TOKEN not in output, output
    [row] = support.stored(site.db, guid)
    assert row['message'] == VIETNAMESE


def test_operator_commands_find_the_data_as_the_receivers_user(site):
    """README's commands, run as the user the receiver runs as with no flag, find this
    set-up's settings, database and log: list shows the push, check passes, log tells why a
    push was refused."""
    guid, response = site.push(message='for the operator')
    assert response.body == DONE, response
    site.push(page=site.page.replace(TOKEN, WRONG_TOKEN))
    owner = getattr(site, 'owner', None) or pwd.getpwnam(site.ws.user)
    for command, expected in (['list'], guid), (['check'], 'integrity:     ok'), (
            ['log'], 'answered 1 (HTTP 403): wrong or missing token'):
        done = subprocess.run(
            [support.SYSTEM_PYTHON, os.path.join(site.ws.app, 'storage.py')] + command,
            env=dict(support.SERVER_ENV, HOME=site.ws.base), cwd='/',
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60,
            preexec_fn=as_user(owner))
        output = done.stdout.decode('utf-8', 'replace')
        assert done.returncode == 0 and expected in output, (command, output)


def as_user(owner):
    def switch():
        os.setgroups([])
        os.setgid(owner.pw_gid)
        os.setuid(owner.pw_uid)
    return switch


# -- Set-ups one by one -----------------------------------------------------------------------

@pytest.mark.parametrize('site', ['cgi', 'suexec'], indirect=True)
def test_cgi_runs_as_the_scripts_owner(site):
    """Under suEXEC the data is written by the site's owner (nobody here), else by Apache's
    user: the database is theirs."""
    guid, response = site.push()
    assert response.body == DONE, response
    assert os.stat(site.db).st_uid == site.owner.pw_uid


@pytest.mark.parametrize('site', ['cgi', 'suexec'], indirect=True)
def test_cgi_script_with_crlf_endings_fails_as_readme_says(site):
    """receiver.cgi saved with Windows line ends: 500 <Status>1</Status>, nothing stored, and
    the error log line README quotes; the script as shipped works again after."""
    script = os.path.join(site.folder, 'receiver.cgi')
    with open(script, 'rb') as f:
        shipped = f.read()
    try:
        with open(script, 'wb') as f:
            f.write(shipped.replace(b'\n', b'\r\n'))
        guid, response = site.push()
        assert (response.status, response.body) == (500, RETRY), response
        assert support.stored(site.db, guid) == []
        log = site.ws.log('error.log')
        assert 'Unknown option: -' in log, log
        assert 'End of script output before headers: receiver.cgi' in log, log
    finally:
        with open(script, 'wb') as f:
            f.write(shipped)
    assert site.push()[1].body == DONE


@pytest.mark.parametrize('site', ['nginx', 'apache_proxy'], indirect=True)
def test_receiver_behind_a_proxy_serves_the_units_socket_alone(site):
    """Behind a proxy the receiver serves the socket systemd passed it, 0600 and the front
    end's user's (fibosms-receiver.socket), and no TCP port at all."""
    path = site.receiver.socket_path
    assert site.receiver.listening == [
        "Listening on the socket systemd passed: %s\n" % path, 'Database: %s\n' % site.db]
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == site.ws.uid
    with open('/proc/%d/net/tcp' % site.receiver.process.pid) as f:
        listening = [line for line in f.read().splitlines()[1:] if line.split()[3] == '0A']
    inodes = set(line.split()[9] for line in listening)
    fds = os.listdir('/proc/%d/fd' % site.receiver.process.pid)
    mine = set(os.readlink('/proc/%d/fd/%s' % (site.receiver.process.pid, fd))
               for fd in fds)
    assert not any('socket:[%s]' % inode in mine for inode in inodes)


@pytest.mark.parametrize('site', ['small_server'], indirect=True)
def test_small_server_listens_on_loopback_only(site):
    """Started with --host and --port, as the unit says for a box without its socket, the
    server listens on 127.0.0.1 and says which database it stores into."""
    assert site.receiver.listening == ['Listening on http://127.0.0.1:%d/\n' % site.port,
                                       'Database: %s\n' % site.db]
    site.push()
    assert os.stat(site.db).st_uid == site.ws.uid          # the unit's user owns its data
    assert os.stat(site.db).st_mode & 0o077 == 0           # UMask=0077: nobody else reads it


@pytest.mark.parametrize('site', ['small_server'], indirect=True)
def test_small_server_push_py_retries_five_times_then_fails(site):
    """deploy/push.py, answered <Status>1</Status>, tries 5 times like the gateway, exits 1."""
    code, output = support.run_push_py(site.url.replace(TOKEN, WRONG_TOKEN), '--phone', PHONE,
                                       '--message', 'x', '--wait', '0')
    assert code == 1, output
    refused = 'HTTP 403 <Status>1</Status>: failed; the gateway would send it again'
    assert output.count(refused) == 5, output
    assert 'try 5 of 5' in output and 'FAILED' in output, output


def test_push_py_fails_when_nothing_answers():
    """deploy/push.py against a port where nothing listens reports no answer and exits 1."""
    url = 'http://127.0.0.1:%d/%s' % (support.free_port(), TOKEN)
    code, output = support.run_push_py(url, '--phone', PHONE, '--message', 'x',
                                       '--tries', '2', '--wait', '0')
    assert code == 1, output
    assert output.count('no answer (ConnectionRefusedError') == 2, output


@pytest.mark.parametrize('site', ['mod_wsgi', 'passenger', 'apache_proxy', 'nginx'], indirect=True)
def test_push_py_names_cafile_for_a_certificate_it_cannot_check(site):
    """Against https with a certificate not publicly trusted, push.py fails and says that
    --cafile is the way; with --cafile it succeeds (test_push_py_reports_success)."""
    code, output = support.run_push_py(site.url, '--phone', PHONE, '--message', 'x',
                                       '--tries', '1')
    assert code == 1 and 'CERTIFICATE_VERIFY_FAILED' in output and '--cafile' in output, output


@pytest.mark.parametrize('site', ['apache_proxy', 'nginx'], indirect=True)
def test_proxy_passes_on_the_callers_address(site):
    """A caller at 127.0.0.2 is stored as 127.0.0.2 and logged so by the small server: the
    proxy's X-Forwarded-For is believed (the unit's FIBOSMS_TRUSTED_PROXIES)."""
    guid = support.new_guid()
    conn = http.client.HTTPSConnection('127.0.0.1', site.port, timeout=20,
                                       source_address=('127.0.0.2', 0),
                                       context=ssl.create_default_context(cafile=site.cafile))
    try:
        conn.request('GET', site.page + '?' + support.push_query('address', PHONE, guid))
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, DONE)
    finally:
        conn.close()
    [row] = support.stored(site.db, guid)
    assert row['remote_addr'] == '127.0.0.2'
    deadline = time.monotonic() + 5
    while '127.0.0.2 - - ' not in site.ws.log('receiver_stderr.log'):
        assert time.monotonic() < deadline, site.ws.log('receiver_stderr.log')
        time.sleep(0.05)


def daemon_pids(apache):
    """The process ids of the snippet's WSGIDaemonProcess (display-name=%{GROUP}), children
    of `apache`'s parent process (not of another Apache on this machine)."""
    pids = set()
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open('/proc/%s/cmdline' % pid, 'rb') as f:
                named = f.read().startswith(b'(wsgi:fibosms)')
            with open('/proc/%s/status' % pid) as f:
                parent = [line.split()[1] for line in f if line.startswith('PPid:')]
            if named and parent == [str(apache.process.pid)]:
                pids.add(pid)
        except OSError:
            pass
    return pids


@pytest.mark.parametrize('site', ['mod_wsgi'], indirect=True)
def test_mod_wsgi_touch_script_reloads_daemon(site):
    """Touching receiver.py, as the snippet says, restarts the daemon processes."""
    assert site.push()[1].body == DONE
    apache = site.servers[0]
    before = daemon_pids(apache)
    assert before, 'no (wsgi:fibosms) daemon process'
    later = time.time() + 5
    script = os.path.join(site.ws.app, 'receiver.py')
    os.utime(script, (later, later))
    deadline = time.monotonic() + 10
    while daemon_pids(apache) & before and time.monotonic() < deadline:
        assert site.push()[1].body == DONE
        time.sleep(0.1)
    assert not daemon_pids(apache) & before, 'the daemon processes were not restarted'


# -- Without a server -------------------------------------------------------------------------

def test_cgi_htaccess_refuses_all_without_cgi_module():
    """Without a CGI module the .htaccess refuses receiver.cgi rather than hand out its text."""
    ws = support.Workspace('nocgi')
    apache = None
    try:
        folder = ws.folder('www', 'fibosms')
        ws.copy(os.path.join(support.DEPLOY, 'cgi', '.htaccess'),
                os.path.join(folder, '.htaccess'), 0o644)
        ws.write(os.path.join(folder, 'receiver.cgi'), support.cgi_script(ws), mode=0o755)
        host = ('DocumentRoot %s\n<Directory %s>\n    AllowOverride All\n'
                '    Require all granted\n</Directory>\n' % (ws.www, ws.www))
        apache = support.Apache(ws, [], host).start()
        response = support.get('http://127.0.0.1:%d/fibosms/receiver.cgi' % apache.port)
        assert response.status == 403, response
        assert b'CODE_DIR' not in response.body and ws.app.encode() not in response.body
    finally:
        if apache is not None:
            apache.stop()
        ws.remove()


def test_cgi_script_ships_executable_with_lf_endings():
    """deploy/cgi/receiver.cgi is executable, writable by its owner only, with LF endings,
    and holds no secret: the settings file does."""
    path = os.path.join(support.DEPLOY, 'cgi', 'receiver.cgi')
    mode = os.stat(path).st_mode
    assert mode & 0o100 and not mode & 0o022, oct(mode)   # what suEXEC demands
    with open(path, 'rb') as f:
        content = f.read()
    assert content.startswith(b'#!/usr/bin/python3 -S\n') and b'\r' not in content
    assert b'TOKEN' not in content and b'SECRET =' not in content


def test_systemd_analyze_verify_accepts_the_units():
    """systemd-analyze verify reports no error and no warning for the socket and the service."""
    support.need('systemd-analyze')
    units = [os.path.join(support.DEPLOY, 'fibosms-receiver.' + kind)
             for kind in ('socket', 'service')]
    done = subprocess.run(['systemd-analyze', 'verify'] + units,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60,
                          env=support.SERVER_ENV)
    assert (done.returncode, done.stdout.decode()) == (0, '')


def test_settings_template_is_valid_for_systemd_and_the_receiver():
    """Every line of deploy/settings.env is a comment, blank, or FIBOSMS_NAME=value that the
    receiver reads without a problem."""
    import receiver
    for line in support.snippet('settings.env').splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith('#'):
            name, equals, value = stripped.partition('=')
            assert equals and name.isidentifier() and value and ' ' not in value, line
    lines = [line for line in support.snippet('settings.env').splitlines()
             if line.startswith('FIBOSMS_')]
    assert lines == ['FIBOSMS_TOKEN=change-me-to-a-long-random-secret']
    assert 'change-me-to-a-long-random-secret' in receiver.PLACEHOLDER_TOKENS
    import commands
    examples = re.findall(r'^#(FIBOSMS_\w+)=', support.snippet('settings.env'), re.M)
    assert len(examples) > 5 and set(examples) <= set(commands.SETTINGS)


def test_cgi_receiver_cgi_of_before_the_settings_file_still_works():
    """An existing set-up keeps working: the receiver.cgi users have, with the settings as
    its constants (tests/old/receiver.cgi, filled in as README then said), runs the
    receiver of today: pushes stored in the database it names, the secret it holds checked."""
    with open(os.path.join(support.ROOT, 'tests', 'old', 'receiver.cgi'), encoding='utf-8') as f:
        old = f.read()
    ws = support.Workspace('old-cgi', settings=False)
    db = os.path.join(ws.data, 'old', 'messages.sqlite3')
    for line, value in (("os.path.expanduser('~/fibosms')", repr(ws.app)),
                        ("os.path.expanduser('~/fibosms-data/messages.sqlite3')", repr(db)),
                        ("'change-me-to-a-long-random-secret'", repr(TOKEN))):
        assert line in old
        old = old.replace(line, value)
    front = support.start('cgi', ws, script=old)
    try:
        guid, response = front.push()
        assert (response.status, response.body) == (200, DONE), (response, front.logs())
        assert len(support.stored(db, guid)) == 1
        _, response = front.push(page=front.page.replace(TOKEN, WRONG_TOKEN))
        assert (response.status, response.body) == (403, RETRY)
    finally:
        front.stop()
