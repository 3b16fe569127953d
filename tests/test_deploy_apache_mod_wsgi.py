"""deploy/apache-mod_wsgi.conf on a private Apache 2.4 with Debian's mod_wsgi, over TLS.

The shipped file is used as it is, changed only on the lines it marks CHANGE (port,
certificate, secret) and in its paths (/srv/fibosms, /var/www/html) and daemon user.
"""
import os
import time

import pytest

import servers
from servers import TOKEN


@pytest.fixture(scope='module')
def site():
    """One Apache with the shipped mod_wsgi site, shared by this module's tests."""
    ws = servers.Workspace('mod_wsgi')
    apache = None
    try:
        servers.place_decoys(ws.www, ws)
        host = ('<Directory %s>\n    Require all granted\n</Directory>\n' % ws.www)
        config = servers.mod_wsgi_config(ws)
        apache = servers.Apache(ws, ['wsgi', 'headers', 'reqtimeout'], host + config).start()
        root = 'https://127.0.0.1:%d/' % apache.port
        site = servers.Site(
            base=root + 'fibosms/', db=ws.db, cafile=ws.cert, folder_url=root,
            access_log=lambda: ''.join(ws.log(name) for name in (
                'fibosms_access.log', 'access.log', 'host_access.log')),
            forbidden=[root + 'receiver.py', root + 'fibosms/messages.sqlite3',
                       root + 'fibosms/' + TOKEN + '/../messages.sqlite3'],
            default_db=os.path.join(os.path.expanduser('~' + ws.user),
                                    '.fibosms', 'messages.sqlite3'))
        site.script = os.path.join(ws.app, 'receiver.py')
        yield site
    finally:
        if apache is not None:
            apache.stop()
        ws.remove()


def test_apache_mod_wsgi_vietnamese_push_stored_exactly(site):
    """A Vietnamese push is answered <Status>2</Status> and stored character for character."""
    servers.check_vietnamese_push_stored(site)


def test_apache_mod_wsgi_duplicate_guid_stored_once(site):
    """The gateway's resend of a guid is answered 2 again and leaves one row."""
    servers.check_duplicate_guid_one_row(site)


def test_apache_mod_wsgi_token_in_path_accepted(site):
    """The secret as the URL's last path segment is accepted."""
    servers.check_token_in_path_works(site)


def test_apache_mod_wsgi_wrong_token_refused_403(site):
    """A wrong or missing secret gets 403 <Status>1</Status> and stores nothing."""
    servers.check_wrong_token_refused(site)


def test_apache_mod_wsgi_setenv_settings_reach_app(site):
    """SetEnv FIBOSMS_DB in the snippet names the file the push lands in."""
    servers.check_settings_reach_app(site)


def test_apache_mod_wsgi_database_files_not_downloadable(site):
    """A database and its -wal, -shm, -journal files under DocumentRoot get 403, the code 404."""
    servers.check_files_not_downloadable(site)


def test_apache_mod_wsgi_access_log_has_no_query_string(site):
    """The snippet's access logs hold neither query strings nor the secret."""
    servers.check_access_log_has_no_query(site)


def test_apache_mod_wsgi_push_py_reports_success(site):
    """deploy/push.py against the page exits 0 and the push is stored."""
    servers.check_push_py_succeeds(site)


def daemon_pids():
    """The process ids of the snippet's WSGIDaemonProcess (display-name=%{GROUP})."""
    pids = set()
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open('/proc/%s/cmdline' % pid, 'rb') as f:
                if f.read().startswith(b'(wsgi:fibosms)'):
                    pids.add(pid)
        except OSError:
            pass
    return pids


def test_apache_mod_wsgi_touch_script_reloads_daemon(site):
    """Touching receiver.py, as the snippet says, restarts the daemon processes."""
    servers.check_token_in_path_works(site)
    before = daemon_pids()
    assert before, 'no (wsgi:fibosms) daemon process'
    later = time.time() + 5
    os.utime(site.script, (later, later))
    servers.check_token_in_path_works(site)
    deadline = time.monotonic() + 10
    while daemon_pids() & before and time.monotonic() < deadline:
        servers.check_token_in_path_works(site)
        time.sleep(0.1)
    assert not daemon_pids() & before, 'the daemon processes were not restarted'
