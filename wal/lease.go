package wal

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
)

// Lease is the durable upper bound of the ids that may have been handed out.
// Before any id of a new block is handed out, the bound is raised past the
// block and fdatasynced; after a crash, ids resume at the bound, so no id is
// ever handed out twice.
//
// The file holds two 32-byte slots written alternately, each with a sequence
// number and a CRC, so a torn write of one slot leaves the other intact.
type Lease struct {
	f     *os.File
	seq   uint64
	bound uint64
}

const (
	leaseFile  = "ids.lease"
	leaseMagic = 0x31455341454c4942 // "BILEASE1"
	slotSize   = 32
)

// OpenLease opens or creates the lease file in dir.
func OpenLease(dir string) (*Lease, error) {
	path := filepath.Join(dir, leaseFile)
	_, statErr := os.Stat(path)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("cannot open id lease %q: %w", path, err)
	}
	if os.IsNotExist(statErr) {
		if err := SyncDir(dir); err != nil {
			f.Close()
			return nil, err
		}
	}
	l := &Lease{f: f}
	var b [2 * slotSize]byte
	n, _ := f.ReadAt(b[:], 0)
	for i := 0; i < 2; i++ {
		s := b[i*slotSize : (i+1)*slotSize]
		if n < (i+1)*slotSize || binary.LittleEndian.Uint64(s[0:8]) != leaseMagic ||
			crc32.Checksum(s[0:24], castagnoli) != binary.LittleEndian.Uint32(s[24:28]) {
			continue
		}
		if seq := binary.LittleEndian.Uint64(s[8:16]); seq >= l.seq {
			l.seq = seq
			l.bound = binary.LittleEndian.Uint64(s[16:24])
		}
	}
	return l, nil
}

// Bound returns the durable upper bound (exclusive) of ids handed out.
func (l *Lease) Bound() uint64 { return l.bound }

// Extend durably raises the bound. It must not be called concurrently.
func (l *Lease) Extend(bound uint64) error {
	if bound <= l.bound {
		return nil
	}
	seq := l.seq + 1
	var s [slotSize]byte
	binary.LittleEndian.PutUint64(s[0:8], leaseMagic)
	binary.LittleEndian.PutUint64(s[8:16], seq)
	binary.LittleEndian.PutUint64(s[16:24], bound)
	binary.LittleEndian.PutUint32(s[24:28], crc32.Checksum(s[0:24], castagnoli))
	if _, err := l.f.WriteAt(s[:], int64(seq%2)*slotSize); err != nil {
		return fmt.Errorf("cannot write id lease: %w", err)
	}
	if err := fdatasync(l.f); err != nil {
		return fmt.Errorf("cannot sync id lease: %w", err)
	}
	l.seq, l.bound = seq, bound
	return nil
}

// Close closes the lease file.
func (l *Lease) Close() error { return l.f.Close() }
