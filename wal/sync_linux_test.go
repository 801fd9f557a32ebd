package wal

import (
	"os"
	"path/filepath"
	"testing"
)

func TestSyncerAIO(t *testing.T) {
	if !AsyncSync() {
		t.Skip("Linux AIO is not available here (io_setup failed): fdatasync blocks instead")
	}
	s := newSyncer()
	defer s.close()
	if s.ctx == 0 {
		t.Fatal("AsyncSync is true but a new syncer has no AIO context")
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "seg"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for i := range 20 {
		if _, err := f.Write([]byte("record\n")); err != nil {
			t.Fatal(err)
		}
		if err := s.fdatasync(f); err != nil {
			t.Fatalf("sync %d: %v", i, err)
		}
	}
}

// A file AIO refuses (a pipe has no fsync) falls back to the blocking call,
// which refuses it too: an error, not a hang or a false success.
func TestSyncerRefusedFile(t *testing.T) {
	s := newSyncer()
	defer s.close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if err := s.fdatasync(w); err == nil {
		t.Fatal("fdatasync of a pipe succeeded")
	}
}

// The blocking fallback works on its own.
func TestSyncerBlocking(t *testing.T) {
	s := &syncer{}
	f, err := os.Create(filepath.Join(t.TempDir(), "seg"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write([]byte("record\n")); err != nil {
		t.Fatal(err)
	}
	if err := s.fdatasync(f); err != nil {
		t.Fatal(err)
	}
	s.close()
}

// BenchmarkSyncer is one small write and its fdatasync, through AIO and
// blocking.
func BenchmarkSyncer(b *testing.B) {
	for _, mode := range []string{"aio", "blocking"} {
		b.Run(mode, func(b *testing.B) {
			s := &syncer{}
			if mode == "aio" {
				if !AsyncSync() {
					b.Skip("no Linux AIO here")
				}
				s = newSyncer()
			}
			defer s.close()
			f, err := os.Create(filepath.Join(b.TempDir(), "seg"))
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			rec := make([]byte, 4096)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := f.Write(rec); err != nil {
					b.Fatal(err)
				}
				if err := s.fdatasync(f); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
