package wal

import (
	"os"
	"runtime"
	"sync/atomic"
)

var faultHook atomic.Pointer[func(op, path string) error]

// SetFaultHook installs fn, which is called before every segment write
// ("write") and fdatasync ("sync"); a non-nil error fails the operation as
// the disk would. It is for fault-injection tests; nil removes it.
func SetFaultHook(fn func(op, path string) error) {
	if fn == nil {
		faultHook.Store(nil)
		return
	}
	faultHook.Store(&fn)
}

func fault(op, path string) error {
	if fn := faultHook.Load(); fn != nil {
		return (*fn)(op, path)
	}
	return nil
}

// writeAt writes b at off, as the disk or the fault hook allows. Like a full
// disk, an injected fault may leave part of b written.
func writeAt(f *os.File, b []byte, off int64) error {
	if err := fault("write", f.Name()); err != nil {
		if len(b) > 1 {
			_, _ = f.WriteAt(b[:len(b)/2], off) // a partial write
		}
		return err
	}
	_, err := f.WriteAt(b, off)
	return err
}

// syncSlots bounds the blocking fdatasyncs in flight (a syncer without
// AIO). A goroutine in fdatasync keeps its P until sysmon takes it back; if
// every P is in fdatasync, nothing polls the network meanwhile and batches
// shrink to a few records (measured: 16,667 req/s over 10,000 connections on
// one core, GOMAXPROCS=2, two shards: 3.6 records per batch and p50 694 ms
// with both shards syncing at once). So at most GOMAXPROCS-1 syncs run at a
// time; the shards that wait only make their next batch larger.
var syncSlots = make(chan struct{}, max(1, runtime.GOMAXPROCS(0)-1))

func blockingSync(f *os.File) error {
	syncSlots <- struct{}{}
	err := fdatasync(f)
	<-syncSlots
	return err
}

// syncData makes f's data durable through sy, as the disk or the fault hook
// allows.
func syncData(sy *syncer, f *os.File) error {
	if err := fault("sync", f.Name()); err != nil {
		return err
	}
	return sy.fdatasync(f)
}
