"""Who may call, by address: FIBOSMS_ALLOW and FIBOSMS_TRUSTED_PROXIES.

Loaded by receiver.read_push only where one of them is set: a push to a page with a secret
and neither never loads this file, nor ipaddress (1.5 ms of a CGI push).

- FIBOSMS_TRUSTED_PROXIES (addresses and networks, comma-separated): the caller is
  REMOTE_ADDR, or, when that is a trusted proxy, the nearest X-Forwarded-For address that is
  not one; those further left were written by the client and prove nothing. Otherwise
  X-Forwarded-For is ignored.
- FIBOSMS_ALLOW: any other caller gets 403.
- A setting that is no address or network is a setting error: try again, one log line.

With neither a secret nor an allowlist, receiver.local_caller lets only this machine call.
"""
import ipaddress

from receiver import Reject, SettingError


def check(environ, settings):
    """The caller's address, once it may call by its address; else Reject(403)."""
    remote = client_address(environ, networks(settings, 'FIBOSMS_TRUSTED_PROXIES'))
    allow = networks(settings, 'FIBOSMS_ALLOW')
    if allow and not address_allowed(remote, allow):
        ip = as_ip(remote)      # logged as parsed: nothing else the caller wrote
        raise Reject(403, 'address %s not allowed' % (repr(str(ip)) if ip else
                                                      '(not an address)'))
    return remote


def client_address(environ, trusted_proxies):
    """REMOTE_ADDR, or, from a trusted proxy, the nearest X-Forwarded-For address not one."""
    remote = environ.get('REMOTE_ADDR', '')
    if not trusted_proxies or not address_allowed(remote, trusted_proxies):
        return remote
    for hop in reversed([h.strip() for h in environ.get('HTTP_X_FORWARDED_FOR', '').split(',')
                         if h.strip()]):
        if not address_allowed(hop, trusted_proxies):
            return hop
        remote = hop
    return remote


def networks(settings, name):
    """The setting `name` ('192.0.2.1, 2001:db8::/32', or a list) as ip_network objects;
    SettingError for an entry that is no address or network."""
    value, parsed = settings.get(name) or '', []
    for entry in (value if isinstance(value, str) else ','.join(value)).split(','):
        try:
            parsed += [ipaddress.ip_network(entry.strip(), strict=False)] if entry.strip() else []
        except ValueError:
            raise SettingError('%s: %r is not an address or network' % (name, entry.strip()[:60]))
    return parsed


def address_allowed(address, nets):
    """Whether `address` is in `nets` (ip_network objects)."""
    ip = as_ip(address)
    return ip is not None and any(ip in net for net in nets)


def as_ip(address):
    """`address` as an ip_address, without an IPv6 zone (fe80::1%eth0); None if it is none."""
    try:
        ip = ipaddress.ip_address(address.split('%')[0])
    except ValueError:
        return None
    return getattr(ip, 'ipv4_mapped', None) or ip  # ::ffff:192.0.2.1 from a dual-stack socket
