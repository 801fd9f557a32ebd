package wal

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// fdatasync flushes a file's data (and the metadata needed to read it back,
// such as its size) to stable storage, blocking the calling thread.
func fdatasync(f *os.File) error { return unix.Fdatasync(int(f.Fd())) }

// preallocate reserves a segment's full size up front. Appends then stay
// within the file's size, so an fdatasync has no size change to journal:
// measured with wrk at 256 connections on one core, about 100k POST/s in
// fsync mode against 85-90k without. Failure (a file system without
// fallocate, or a full disk) only loses that speed-up; recovery treats the
// zero tail as free space.
func preallocate(f *os.File, size int64) {
	_ = unix.Fallocate(int(f.Fd()), 0, 0, size)
}

// startWriteback asks the kernel to start writing out n bytes of f at off,
// without waiting for it (sync_file_range with SYNC_FILE_RANGE_WRITE). It is
// advice only: a later fdatasync still makes the data durable.
func startWriteback(f *os.File, off, n int64) {
	_ = unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
}

// A syncer runs one log's fdatasyncs. A goroutine blocked in the
// fdatasync system call keeps its P until sysmon takes it back, and the
// P it gets on return waits its turn behind every runnable worker; on one
// core that left the CPU idle while workers waited for the sync (wrk, 256
// connections, fsync mode: 62 records per fdatasync, 1.7 ms from write to
// release, 0.61 of memory mode's throughput, and the same with the
// fdatasync skipped entirely). So the syncer submits the fdatasync through
// Linux AIO (IOCB_CMD_FDSYNC, run by a kernel worker) and waits for its
// completion on an eventfd through Go's network poller, as a connection
// waits for bytes: the P runs workers meanwhile, and the waiter is woken
// like any ready connection (measured: 123 records per fdatasync and 0.79
// to 0.92 of memory mode with GOMAXPROCS=1).
//
// Where AIO is missing or refuses the file, it falls back to the blocking
// call, bounded by syncSlots. A syncer is used by one goroutine at a time.
type syncer struct {
	ctx   uintptr  // aio_context_t; 0 = blocking fallback
	event *os.File // eventfd the kernel signals on completion, polled
	buf   [8]byte
}

// AIO ABI (linux/aio_abi.h).
const (
	iocbCmdFdsync = 3
	iocbFlagResfd = 1
)

type iocb struct {
	data      uint64
	key       uint32
	rwFlags   int32
	opcode    uint16
	reqprio   int16
	fildes    uint32
	buf       uint64
	nbytes    uint64
	offset    int64
	reserved2 uint64
	flags     uint32
	resfd     uint32
}

type ioEvent struct {
	data, obj uint64
	res, res2 int64
}

var (
	aioOnce sync.Once
	aioOK   bool
)

// AsyncSync reports whether fdatasyncs run through Linux AIO here, so that
// waiting for one does not hold a P: an AIO fdatasync of a scratch file in
// the temporary directory must succeed (kernels before 4.18 refuse
// IOCB_CMD_FDSYNC). If not, the caller should run at least two Ps per CPU
// in fsync mode.
func AsyncSync() bool {
	aioOnce.Do(func() {
		s := newSyncer()
		defer s.close()
		if s.ctx == 0 {
			return
		}
		f, err := os.CreateTemp("", "busyapi-aio-probe-*")
		if err != nil {
			return
		}
		defer os.Remove(f.Name())
		defer f.Close()
		aioOK = s.aioFdatasync(f) == nil
	})
	return aioOK
}

// newSyncer sets up an AIO context and its eventfd, or returns a blocking
// syncer if the kernel has no AIO (or no room for another context).
func newSyncer() *syncer {
	var ctx uintptr
	if _, _, e := unix.Syscall(unix.SYS_IO_SETUP, 1, uintptr(unsafe.Pointer(&ctx)), 0); e != 0 {
		return &syncer{}
	}
	fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		_, _, _ = unix.Syscall(unix.SYS_IO_DESTROY, ctx, 0, 0)
		return &syncer{}
	}
	// A non-blocking descriptor: os.NewFile registers it with the poller.
	return &syncer{ctx: ctx, event: os.NewFile(uintptr(fd), "aio-eventfd")}
}

// errNoAIOSync is aioFdatasync's answer when the kernel or the file system
// takes no AIO fdatasync.
var errNoAIOSync = errors.New("wal: no AIO fdatasync here")

// fdatasync makes f's data durable, as the fdatasync system call does.
func (s *syncer) fdatasync(f *os.File) error {
	if s.ctx == 0 {
		return blockingSync(f)
	}
	err := s.aioFdatasync(f)
	if errors.Is(err, errNoAIOSync) {
		// This file system takes no AIO fsync (a syncer serves one log, in
		// one directory): block instead, from now on.
		s.close()
		return blockingSync(f)
	}
	return err
}

// aioFdatasync runs fdatasync of f through AIO and waits for it in the
// network poller.
func (s *syncer) aioFdatasync(f *os.File) error {
	cb := iocb{opcode: iocbCmdFdsync, fildes: uint32(f.Fd()), flags: iocbFlagResfd, resfd: uint32(s.event.Fd())}
	p := &cb
	if _, _, e := unix.Syscall(unix.SYS_IO_SUBMIT, s.ctx, 1, uintptr(unsafe.Pointer(&p))); e != 0 {
		if e == unix.EINVAL || e == unix.ENOSYS || e == unix.EOPNOTSUPP {
			return errNoAIOSync
		}
		return fmt.Errorf("io_submit: %w", e)
	}
	// Only a closed syncer fails this read; its io_destroy waits for the
	// submitted fdatasync.
	if _, err := s.event.Read(s.buf[:]); err != nil {
		return fmt.Errorf("aio eventfd: %w", err)
	}
	var (
		ev   ioEvent
		zero unix.Timespec
		n    uintptr
		e    = unix.EINTR
	)
	for e == unix.EINTR {
		n, _, e = unix.Syscall6(unix.SYS_IO_GETEVENTS, s.ctx, 1, 1, uintptr(unsafe.Pointer(&ev)), uintptr(unsafe.Pointer(&zero)), 0)
	}
	switch {
	case e != 0:
		return fmt.Errorf("io_getevents: %w", e)
	case n != 1:
		return fmt.Errorf("io_getevents: %d events after the completion signal", n)
	case ev.res < 0:
		return unix.Errno(-ev.res)
	}
	return nil
}

func (s *syncer) close() {
	if s.ctx != 0 {
		_, _, _ = unix.Syscall(unix.SYS_IO_DESTROY, s.ctx, 0, 0)
		_ = s.event.Close()
		s.ctx = 0
	}
}
