"""The receiver's own log: why a push was answered 1, for an owner without a shell.

Loaded only when there is something to say (a push refused or failed, a warning): a push
answered 2 never loads it. Each line goes to the web server's error log (wsgi.errors) and to
receiver.log in the data folder (the settings file's folder, ~/fibosms-data by default),
which a shared-hosting owner reads with the file manager, `python3 storage.py log`, or
`check`. A line is a reason: the answer's HTTP code and why, and the guid of a caller that
was let in; never the secret, a phone or a message's text (the callers in receiver.py and
hooks.py write reasons only, and tests read every log for those).

receiver.log is this user's private file (mode 600; a link or a pipe planted at its name is
left alone), renamed to receiver.log.1 once over MAX_LOG bytes, so the two never hold much
more than twice that. A line that cannot be written is lost; the push never is.
"""
import os
import stat
import sys
import time
import traceback

MAX_LOG = 1024 * 1024       # bytes of receiver.log before it becomes receiver.log.1
LOG_FILE = 'receiver.log'


def answered(environ, place, exc, guid):
    """The line for a push answered 1 because of `exc`: a receiver.Reject names its code and
    reason; anything else is a bug, its traceback to the server's error log only."""
    import receiver
    if isinstance(exc, receiver.Reject):
        log(environ, place[0], 'answered 1 (HTTP %d): %s%s' % (
            exc.code, exc.reason, '' if guid is None else ' (guid %r)' % guid))
    else:
        log(environ, place[0], "answered 1 (HTTP 200): unexpected error %s (guid %r;"
            " traceback in the server's error log)" % (type(exc).__name__, guid),
            traceback.format_exc())


def log(environ, config, line, detail=''):
    """`line` to the server's error log (`detail`, a traceback, after it) and to receiver.log
    beside the settings file `config`."""
    errors = environ.get('wsgi.errors') or sys.stderr
    errors.write('fibosms-receiver: %s\n%s' % (line, detail))
    errors.flush()
    write(os.path.join(os.path.dirname(config), LOG_FILE), line)


def write(path, line):
    """Append `line`, stamped (UTC), to the log at `path`, if its folder is there."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, 0o600)
        if os.fstat(fd).st_size > MAX_LOG:
            os.close(fd)
            os.replace(path, path + '.1')
            fd = os.open(path, flags, 0o600)
        try:
            st = os.fstat(fd)
            if st.st_uid == os.geteuid() and stat.S_ISREG(st.st_mode) and not st.st_mode & 0o077:
                os.write(fd, ('%s %s\n' % (time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
                                           line)).encode('utf-8', 'backslashreplace'))
        finally:
            os.close(fd)
    except OSError:
        pass


def lines(config, count):
    """The last `count` lines of the log beside the settings file `config` (receiver.log,
    then receiver.log.1), oldest first."""
    path, found = os.path.join(os.path.dirname(config), LOG_FILE), []
    for name in (path, path + '.1'):
        try:
            with open(name, encoding='utf-8', errors='replace') as f:
                found = f.read().splitlines()[-count:] + found
        except OSError:
            pass
        if len(found) >= count:
            break
    return found[-count:]


def diagnose(path):
    """'; ' and what is wrong with the filesystem of the database `path`, or '': SQLite names
    neither a read-only filesystem nor a full one ('disk I/O error' when its -shm cannot
    grow)."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fs = os.statvfs(folder)
    except OSError:
        return ''
    if fs.f_flag & os.ST_RDONLY:
        return '; the filesystem holding %s is read-only' % folder
    if fs.f_bavail * fs.f_frsize < 1 << 16:     # less than a few of SQLite's pages
        return '; no space left on the filesystem holding %s' % folder
    return next(('; %s is not writable by this user' % name for name in (folder, path)
                 if os.path.exists(name) and not os.access(name, os.W_OK)), '')
