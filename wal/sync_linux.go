package wal

import (
	"os"

	"golang.org/x/sys/unix"
)

// fdatasync flushes a file's data (and the metadata needed to read it back,
// such as its size) to stable storage.
func fdatasync(f *os.File) error { return unix.Fdatasync(int(f.Fd())) }
