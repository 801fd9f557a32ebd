package wal

import (
	"os"
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

func syncData(f *os.File) error {
	if err := fault("sync", f.Name()); err != nil {
		return err
	}
	return fdatasync(f)
}
