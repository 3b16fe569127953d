"""deploy/cgi/ (.htaccess and receiver.cgi) on a private Apache 2.4 with mod_cgid, the way a
shared host runs them: the host's configuration allows .htaccess overrides (AllowOverride All)
and knows nothing of the receiver; the two shipped files are uploaded to public_html/fibosms/,
receiver.py and storage.py outside public_html.

Every test runs twice: CGI as Apache's user, and under suEXEC as the site's owner (nobody
here), as most shared hosts run it. suEXEC (apache2-suexec-pristine) only runs scripts under
/var/www, so that run puts its document root in a temporary folder there.

.htaccess is used as it is; receiver.cgi is changed only on the lines it marks CHANGE.
"""
import os
import pwd
import shutil
import tempfile

import pytest

import servers
from servers import TOKEN

HOST_CONFIG = """\
# A shared host: CGI on, .htaccess obeyed; its access log records whole request lines.
ScriptSock {run}/cgid.sock
DocumentRoot {www}
<Directory {www}>
    Options SymLinksIfOwnerMatch
    AllowOverride All
    Require all granted
</Directory>
"""
SUEXEC_ROOT = '/var/www'                  # suexec-pristine's AP_DOC_ROOT
SUEXEC_USER = ('nobody', 'nogroup')       # AP_UID_MIN and AP_GID_MIN are 100


def upload(ws, public_html, owner):
    """Lay out public_html/fibosms/ as the user would upload it; return that folder."""
    folder = os.path.join(public_html, 'fibosms')
    os.mkdir(folder)
    os.chmod(folder, 0o755)
    servers.place_decoys(folder, ws)
    for name in ('receiver.py', 'storage.py', 'settings.ini', '.env'):  # uploaded by mistake
        ws.copy(os.path.join(ws.app, 'receiver.py'), os.path.join(folder, name), 0o644)
    ws.copy(os.path.join(servers.DEPLOY, 'cgi', '.htaccess'),
            os.path.join(folder, '.htaccess'), 0o644)
    ws.write(os.path.join(folder, 'receiver.cgi'), servers.cgi_script(ws.app, ws.db), mode=0o755)
    for path in (public_html, folder, os.path.join(folder, 'receiver.cgi'), ws.data):
        os.chown(path, owner.pw_uid, owner.pw_gid)
    return folder


@pytest.fixture(scope='module', params=['cgid', 'suexec'])
def site(request):
    """One Apache serving public_html/fibosms/ with the shipped files, shared by this module."""
    ws = servers.Workspace('cgi')
    apache = public_html = None
    try:
        if request.param == 'suexec':
            public_html = tempfile.mkdtemp(prefix='fibosms-test-', dir=SUEXEC_ROOT)
            os.chmod(public_html, 0o755)
            owner = pwd.getpwnam(SUEXEC_USER[0])
            host = 'SuexecUserGroup %s %s\n' % SUEXEC_USER
            modules = ['cgid', 'suexec', 'headers', 'rewrite']
        else:
            public_html = ws.www
            owner = pwd.getpwnam(ws.user)
            host, modules = '', ['cgid', 'headers', 'rewrite']
        folder = upload(ws, public_html, owner)
        host += HOST_CONFIG.format(run=ws.run, www=public_html)
        apache = servers.Apache(ws, modules, host).start()
        if request.param == 'suexec' and 'suEXEC mechanism enabled' not in ws.log('error.log'):
            raise RuntimeError('Apache runs without suEXEC (apt-get install '
                               'apache2-suexec-pristine):\n' + ws.log('error.log'))
        root = 'http://127.0.0.1:%d/fibosms/' % apache.port
        site = servers.Site(
            base=root + 'receiver.cgi/', db=ws.db, folder_url=root,
            access_log=lambda: ws.log('error.log'),
            forbidden=[root + name for name in (
                'receiver.cgi', 'receiver.py', 'storage.py', 'settings.ini', '.env',
                '.htaccess')],
            default_db=os.path.join(owner.pw_dir, 'fibosms-data', 'messages.sqlite3'))
        site.script_uid, site.folder, site.error_log = owner.pw_uid, folder, ws.log
        yield site
    finally:
        if apache is not None:
            apache.stop()
        if public_html is not None and public_html != ws.www:
            shutil.rmtree(public_html, ignore_errors=True)
        ws.remove()


def test_apache_cgi_vietnamese_push_stored_exactly(site):
    """A Vietnamese push is answered <Status>2</Status> and stored character for character."""
    servers.check_vietnamese_push_stored(site)


def test_apache_cgi_duplicate_guid_stored_once(site):
    """The gateway's resend of a guid is answered 2 again and leaves one row."""
    servers.check_duplicate_guid_one_row(site)


def test_apache_cgi_token_in_path_accepted(site):
    """The secret as the last path segment after receiver.cgi is accepted."""
    servers.check_token_in_path_works(site)


def test_apache_cgi_wrong_token_refused_403(site):
    """A wrong or missing secret gets 403 <Status>1</Status> and stores nothing."""
    servers.check_wrong_token_refused(site)


def test_apache_cgi_wrapper_settings_reach_app(site):
    """The database named in receiver.cgi is the file the push lands in (no SetEnv needed)."""
    servers.check_settings_reach_app(site)


def test_apache_cgi_database_code_and_config_not_downloadable(site):
    """The shipped .htaccess refuses database files, code, settings and dotfiles (403)."""
    servers.check_files_not_downloadable(site)


def test_apache_cgi_error_log_has_no_query_string(site):
    """The receiver's log lines, in the host's error log, hold no query string nor secret."""
    servers.check_access_log_has_no_query(site)


def test_apache_cgi_push_py_reports_success(site):
    """deploy/push.py against the page exits 0 and the push is stored."""
    servers.check_push_py_succeeds(site)


def test_apache_cgi_runs_as_script_owner(site):
    """The database is written by the user the script runs as (the site's owner under suEXEC)."""
    servers.check_token_in_path_works(site)
    assert os.stat(site.db).st_uid == site.script_uid


def test_apache_cgi_script_with_crlf_endings_fails_as_readme_says(site):
    """receiver.cgi saved with Windows line ends: 500 <Status>1</Status>, nothing stored, and
    the error log line README step 6 quotes; the script as shipped works again after."""
    servers.check_token_in_path_works(site)     # the database exists, to look in
    script = os.path.join(site.folder, 'receiver.cgi')
    with open(script, 'rb') as f:
        shipped = f.read()
    try:
        with open(script, 'wb') as f:
            f.write(shipped.replace(b'\n', b'\r\n'))
        guid, response = site.push()
        assert (response.status, response.body) == (500, b'<Status>1</Status>'), response
        assert servers.stored(site.db, guid) == []
        log = site.error_log('error.log')
        assert 'Unknown option: -' in log, log
        assert 'End of script output before headers: receiver.cgi' in log, log
    finally:
        with open(script, 'wb') as f:
            f.write(shipped)
    servers.check_token_in_path_works(site)


def test_apache_cgi_htaccess_refuses_all_without_cgi_module():
    """Without a CGI module the .htaccess refuses receiver.cgi rather than show its secret."""
    ws = servers.Workspace('nocgi')
    apache = None
    try:
        folder = ws.folder('www', 'fibosms')
        ws.copy(os.path.join(servers.DEPLOY, 'cgi', '.htaccess'),
                os.path.join(folder, '.htaccess'), 0o644)
        ws.write(os.path.join(folder, 'receiver.cgi'), servers.snippet(
            'cgi/receiver.cgi', [("'change-me-to-a-long-random-secret'", repr(TOKEN))]),
            mode=0o755)
        host = HOST_CONFIG.replace('ScriptSock {run}/cgid.sock\n', '').format(www=ws.www)
        apache = servers.Apache(ws, [], host).start()
        response = servers.get('http://127.0.0.1:%d/fibosms/receiver.cgi' % apache.port)
        assert response.status == 403, response
        assert TOKEN.encode() not in response.body
    finally:
        if apache is not None:
            apache.stop()
        ws.remove()


def test_apache_cgi_script_ships_executable_with_lf_endings():
    """deploy/cgi/receiver.cgi is executable, writable by its owner only, with LF endings."""
    path = os.path.join(servers.DEPLOY, 'cgi', 'receiver.cgi')
    mode = os.stat(path).st_mode
    assert mode & 0o100 and not mode & 0o022, oct(mode)   # what suEXEC demands
    with open(path, 'rb') as f:
        content = f.read()
    assert content.startswith(b'#!/usr/bin/python3 -S\n') and b'\r' not in content
