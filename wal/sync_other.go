//go:build !linux

package wal

import "os"

func fdatasync(f *os.File) error { return f.Sync() }

func preallocate(*os.File, int64) {}

func startWriteback(*os.File, int64, int64) {}

// syncer is the blocking fallback everywhere but Linux.
type syncer struct{}

func newSyncer() *syncer                   { return &syncer{} }
func (*syncer) fdatasync(f *os.File) error { return blockingSync(f) }
func (*syncer) close()                     {}

// AsyncSync reports whether fdatasyncs run without holding a P: only on
// Linux (see sync_linux.go).
func AsyncSync() bool { return false }
