package wal

import (
	"os"

	"golang.org/x/sys/unix"
)

// fdatasync flushes a file's data (and the metadata needed to read it back,
// such as its size) to stable storage.
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
