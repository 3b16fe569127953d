"""deploy/apache-reverse-proxy.conf: a private Apache 2.4 (mod_proxy_http, TLS) in front of
python3 receiver.py as deploy/fibosms-receiver.service starts it.

The shipped file is used as it is, changed only on the lines it marks CHANGE (port,
certificate, the receiver's port) and in its DocumentRoot.
"""
import http.client
import ssl
import urllib.parse

import pytest

import servers


@pytest.fixture(scope='module')
def site():
    """One receiver behind one Apache, shared by this module's tests."""
    ws = servers.Workspace('apache_proxy')
    receiver = apache = None
    try:
        servers.place_decoys(ws.www, ws)
        receiver = servers.Receiver(ws).start()
        host = '<Directory %s>\n    Require all granted\n</Directory>\n' % ws.www
        config = servers.snippet('apache-reverse-proxy.conf', servers.tls_replacements(ws) + [
            ('<VirtualHost *:443>', '<VirtualHost *:{port}>'),
            ('DocumentRoot /var/www/html', 'DocumentRoot %s' % ws.www),
            ('127.0.0.1:8000', '127.0.0.1:%d' % receiver.port),
        ])
        modules = ['proxy', 'proxy_http', 'headers', 'reqtimeout']
        apache = servers.Apache(ws, modules, host + config).start()
        root = 'https://127.0.0.1:%d/' % apache.port
        yield servers.Site(
            base=root + 'fibosms/', db=ws.db, cafile=ws.cert, folder_url=root,
            access_log=lambda: ''.join(ws.log(name) for name in (
                'fibosms_access.log', 'access.log', 'host_access.log',
                'receiver_stderr.log')),
            forbidden=[root + 'fibosms/' + name for name in servers.DECOYS + (
                'receiver.py', 'data/messages.sqlite3')])
    finally:
        for server in (apache, receiver):
            if server is not None:
                server.stop()
        ws.remove()


def test_apache_proxy_vietnamese_push_stored_exactly(site):
    """A Vietnamese push through the proxy is answered 2 and stored character for character."""
    servers.check_vietnamese_push_stored(site)


def test_apache_proxy_duplicate_guid_stored_once(site):
    """The gateway's resend of a guid is answered 2 again and leaves one row."""
    servers.check_duplicate_guid_one_row(site)


def test_apache_proxy_token_in_path_accepted(site):
    """The secret as the URL's last path segment reaches the receiver and is accepted."""
    servers.check_token_in_path_works(site)


def test_apache_proxy_wrong_token_refused_403(site):
    """A wrong or missing secret gets 403 <Status>1</Status> and stores nothing."""
    servers.check_wrong_token_refused(site)


def test_apache_proxy_unit_settings_reach_app(site):
    """The unit's --db names the file the push lands in."""
    servers.check_settings_reach_app(site)


def test_apache_proxy_database_files_not_downloadable(site):
    """Database files under DocumentRoot get 403; under /fibosms/ the receiver answers 403."""
    servers.check_files_not_downloadable(site)


def test_apache_proxy_access_log_has_no_query_string(site):
    """The snippet's access logs and the receiver's log hold no query string nor secret."""
    servers.check_access_log_has_no_query(site)


def test_apache_proxy_push_py_reports_success(site):
    """deploy/push.py against the https URL exits 0 and the push is stored."""
    servers.check_push_py_succeeds(site)


def test_apache_proxy_forwards_client_address(site):
    """A caller at 127.0.0.2 is stored as 127.0.0.2: the proxy's X-Forwarded-For is believed."""
    guid = servers.new_guid()
    query = servers.push_query('address', servers.PHONE, guid)
    path = urllib.parse.urlsplit(site.url).path + '?' + query
    host, port = urllib.parse.urlsplit(site.url).netloc.split(':')
    conn = http.client.HTTPSConnection(host, int(port), timeout=20,
                                       source_address=('127.0.0.2', 0),
                                       context=ssl.create_default_context(cafile=site.cafile))
    try:
        conn.request('GET', path)
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b'<Status>2</Status>')
    finally:
        conn.close()
    [row] = servers.stored(site.db, guid)
    assert row['remote_addr'] == '127.0.0.2'
