package server

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strings"
	"syscall"
	"time"
)

// UnixPrefix marks a unix socket address for Listen: "unix:/run/busyapi.sock".
const UnixPrefix = "unix:"

// Listen listens on addr: a TCP HOST:PORT, or UnixPrefix and a path for a
// unix socket (a sidecar's). Before listening on a unix socket it removes a
// stale socket file, one nobody accepts on any more (connecting to it is
// refused, as after a crash), but it refuses, removing nothing, when a
// server accepts on it or when the path is not a socket. Closing the
// listener (Shutdown does) removes the socket file.
func (s *Server) Listen(addr string) (net.Listener, error) {
	path, ok := strings.CutPrefix(addr, UnixPrefix)
	if !ok {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("cannot listen on %q: %w", addr, err)
		}
		return ln, nil
	}
	if path == "" {
		return nil, errors.New("empty unix socket path: use unix:/path/to.sock")
	}
	removed, err := removeStaleSocket(path)
	if err != nil {
		return nil, err
	}
	if removed {
		s.log.Info("removed a stale unix socket: no server was listening on it", "path", path)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("cannot listen on unix socket %s: %w", path, err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(true)
	return ln, nil
}

// removeStaleSocket removes the socket file at path if no server accepts on
// it, and reports whether it did. It leaves a missing path alone and
// refuses anything else.
func removeStaleSocket(path string) (bool, error) {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("cannot check unix socket path %s: %w", path, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return false, fmt.Errorf("%s exists and is not a unix socket: refusing to replace it; remove it or choose another path", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return false, fmt.Errorf("another server is listening on unix socket %s: stop it first or choose another path", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		// EAGAIN (a full backlog: a live server), EACCES and the like: we
		// cannot tell that it is stale, so leave it.
		return false, fmt.Errorf("cannot tell whether unix socket %s is in use (%v): refusing to replace it", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("cannot remove stale unix socket %s: %w", path, err)
	}
	return true, nil
}
