package cluster

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"

	"github.com/busyapi/busyapi/wal"
)

// The forward cursor file, CursorFile in the data directory, holds two
// slots written alternately in place, each with a sequence number and a
// CRC-32C, so a torn write leaves the other slot intact; every write is
// fsynced. The slot with the highest valid sequence number wins. A slot:
//
//	[0:8]   magic "BIFWD001"
//	[8:16]  sequence number, uint64 little endian
//	[16:24] caught-up time: unix nanoseconds at which every usage stored
//	        before was forwarded (0: unknown)
//	[24:28] n, the number of positions
//	[28:32] CRC-32C of [0:28] and the positions
//	[32:32+8n] one log position per shard, uint64 little endian
//
// Slots have room for maxCursorShards positions; slot 1 starts at
// cursorSlot.
const (
	CursorFile      = "forward.cursor"
	cursorMagic     = 0x3130304457464942 // "BIFWD001" little endian
	cursorHeader    = 32
	maxCursorShards = 4096
	cursorSlot      = cursorHeader + 8*maxCursorShards
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// cursorFile is the durable forward cursor.
type cursorFile struct {
	f   *os.File
	seq uint64
	buf []byte
}

// openCursor opens (creating if needed) the cursor file in dir and returns
// the last cursor written (nil if none) and its caught-up time.
func openCursor(dir string) (*cursorFile, []uint64, int64, error) {
	path := filepath.Join(dir, CursorFile)
	_, statErr := os.Stat(path)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("cannot open the forward cursor: %w", err)
	}
	c := &cursorFile{f: f}
	if os.IsNotExist(statErr) {
		if err := wal.SyncDir(dir); err != nil {
			f.Close()
			return nil, nil, 0, err
		}
		return c, nil, 0, nil
	}
	b := make([]byte, 2*cursorSlot)
	n, err := f.ReadAt(b, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		f.Close()
		return nil, nil, 0, fmt.Errorf("cannot read the forward cursor %q: %w", path, err)
	}
	b = b[:n]
	var pos []uint64
	var caughtUp int64
	found := false
	for i := 0; i < 2; i++ {
		if len(b) < i*cursorSlot+cursorHeader {
			continue
		}
		s := b[i*cursorSlot:]
		if binary.LittleEndian.Uint64(s[0:8]) != cursorMagic {
			continue
		}
		cnt := int(binary.LittleEndian.Uint32(s[24:28]))
		if cnt > maxCursorShards || len(s) < cursorHeader+8*cnt {
			continue
		}
		if slotCRC(s[:cursorHeader+8*cnt]) != binary.LittleEndian.Uint32(s[28:32]) {
			continue
		}
		seq := binary.LittleEndian.Uint64(s[8:16])
		if found && seq <= c.seq {
			continue
		}
		found = true
		c.seq = seq
		caughtUp = int64(binary.LittleEndian.Uint64(s[16:24]))
		pos = make([]uint64, cnt)
		for j := range pos {
			pos[j] = binary.LittleEndian.Uint64(s[cursorHeader+8*j:])
		}
	}
	if !found && len(b) > 0 {
		f.Close()
		return nil, nil, 0, fmt.Errorf("the forward cursor %q is damaged (no valid slot): move it aside to forward the whole log again (the stream drops what it already has within its duplicate window)", path)
	}
	return c, pos, caughtUp, nil
}

func slotCRC(s []byte) uint32 {
	c := crc32.Update(0, castagnoli, s[0:28])
	return crc32.Update(c, castagnoli, s[cursorHeader:])
}

// write durably records pos and the caught-up time, in the slot not
// holding the last cursor written.
func (c *cursorFile) write(pos []uint64, caughtUp int64) error {
	if len(pos) > maxCursorShards {
		return fmt.Errorf("forward cursor: %d shards, at most %d", len(pos), maxCursorShards)
	}
	seq := c.seq + 1
	n := cursorHeader + 8*len(pos)
	if cap(c.buf) < n {
		c.buf = make([]byte, n)
	}
	s := c.buf[:n]
	binary.LittleEndian.PutUint64(s[0:8], cursorMagic)
	binary.LittleEndian.PutUint64(s[8:16], seq)
	binary.LittleEndian.PutUint64(s[16:24], uint64(caughtUp))
	binary.LittleEndian.PutUint32(s[24:28], uint32(len(pos)))
	for j, p := range pos {
		binary.LittleEndian.PutUint64(s[cursorHeader+8*j:], p)
	}
	binary.LittleEndian.PutUint32(s[28:32], slotCRC(s))
	if _, err := c.f.WriteAt(s, int64(seq%2)*cursorSlot); err != nil {
		return fmt.Errorf("cannot write the forward cursor: %w", err)
	}
	if err := c.f.Sync(); err != nil {
		return fmt.Errorf("cannot sync the forward cursor: %w", err)
	}
	c.seq = seq
	return nil
}

func (c *cursorFile) close() error { return c.f.Close() }
