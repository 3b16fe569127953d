"""deploy/nginx-reverse-proxy.conf: a private nginx (TLS) in front of python3 receiver.py as
deploy/fibosms-receiver.service starts it.

The shipped file is used as it is, changed only on the lines it marks CHANGE (ports,
certificate, the receiver's port; the IPv6 listen line dropped) and in its paths.
"""
import pytest

import servers


@pytest.fixture(scope='module')
def site():
    """One receiver behind one nginx, shared by this module's tests."""
    ws = servers.Workspace('nginx')
    receiver = nginx = None
    try:
        servers.place_decoys(ws.www, ws)
        receiver = servers.Receiver(ws).start()
        config = servers.snippet('nginx-reverse-proxy.conf', servers.tls_replacements(ws) + [
            ('listen 443 ssl;', 'listen 127.0.0.1:{port} ssl;'),
            ('listen [::]:443 ssl;', '# (IPv6 listen line dropped: loopback only here)'),
            ('root /var/www/html;', 'root %s;' % ws.www),
            ('/var/log/nginx/', ws.logs + '/'),
            ('127.0.0.1:8000', '127.0.0.1:%d' % receiver.port),
        ])
        nginx = servers.Nginx(ws, config).start()
        root = 'https://127.0.0.1:%d/' % nginx.port
        yield servers.Site(
            base=root + 'fibosms/', db=ws.db, cafile=ws.cert, folder_url=root,
            access_log=lambda: ''.join(ws.log(name) for name in (
                'fibosms_access.log', 'host_access.log', 'receiver_stderr.log')),
            forbidden=[root + 'fibosms/' + name for name in servers.DECOYS + (
                'receiver.py', 'data/messages.sqlite3')])
    finally:
        for server in (nginx, receiver):
            if server is not None:
                server.stop()
        ws.remove()


def test_nginx_vietnamese_push_stored_exactly(site):
    """A Vietnamese push through nginx is answered 2 and stored character for character."""
    servers.check_vietnamese_push_stored(site)


def test_nginx_duplicate_guid_stored_once(site):
    """The gateway's resend of a guid is answered 2 again and leaves one row."""
    servers.check_duplicate_guid_one_row(site)


def test_nginx_token_in_path_accepted(site):
    """The secret as the URL's last path segment reaches the receiver and is accepted."""
    servers.check_token_in_path_works(site)


def test_nginx_wrong_token_refused_403(site):
    """A wrong or missing secret gets 403 <Status>1</Status> and stores nothing."""
    servers.check_wrong_token_refused(site)


def test_nginx_unit_settings_reach_app(site):
    """The unit's --db names the file the push lands in."""
    servers.check_settings_reach_app(site)


def test_nginx_database_files_not_downloadable(site):
    """Database files under root get 403; under /fibosms/ the receiver answers 403."""
    servers.check_files_not_downloadable(site)


def test_nginx_access_log_has_no_query_string(site):
    """The snippet's access log and the receiver's log hold no query string nor secret."""
    servers.check_access_log_has_no_query(site)


def test_nginx_push_py_reports_success(site):
    """deploy/push.py against the https URL exits 0 and the push is stored."""
    servers.check_push_py_succeeds(site)
