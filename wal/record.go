// Package wal is busyapi's durable log: per-shard append-only segment files
// of CRC-framed records, written in batches with one fdatasync each (group
// commit), recovered on start by keeping exactly the valid prefix of a torn
// last batch, and read back by id through an in-memory index.
package wal

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
)

// A record on disk:
//
//	[0:4]   body length n, uint32 little endian
//	[4:8]   CRC-32C of bytes [0:4] and [8:24+n], uint32 little endian
//	[8:16]  id, uint64 little endian; 0 marks a meta record (Store.Append)
//	[16:24] sync mark, uint64 little endian
//	[24:24+n] body
//
// The CRC covers the length, so a torn or flipped length is caught before it
// sends the scanner astray. An all-zero header never checks: a zeroed sector
// or a preallocated hole reads as bad, not as an empty record.
//
// The sync mark is the shard log position up to which the log had been
// fdatasynced when the record was written: in fsync mode, the position of the
// first record of its batch. It is never above the record's own position.
// A valid record whose mark lies above a damaged spot proves that the spot
// was synced (the record could only be written after that fdatasync), so
// recovery tells damage in synced data from a torn last batch.
const (
	headerSize = 24
	// MaxBody bounds a record's body, far above any --max-body in use, so
	// a corrupt length is rejected before anything is read or allocated.
	MaxBody = 16 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Errors from decoding. ErrTorn means the data ends inside a record.
var (
	ErrTorn    = errors.New("wal: torn record")
	ErrCorrupt = errors.New("wal: crc mismatch")
)

// AppendRecord appends the framed record of id, sync mark and body to dst.
func AppendRecord(dst []byte, id, mark uint64, body []byte) []byte {
	start := len(dst)
	var h [headerSize]byte
	binary.LittleEndian.PutUint32(h[0:4], uint32(len(body)))
	binary.LittleEndian.PutUint64(h[8:16], id)
	binary.LittleEndian.PutUint64(h[16:24], mark)
	dst = append(dst, h[:]...)
	dst = append(dst, body...)
	binary.LittleEndian.PutUint32(dst[start+4:], recordCRC(dst[start:]))
	return dst
}

func recordCRC(rec []byte) uint32 {
	c := crc32.Update(0, castagnoli, rec[0:4])
	return crc32.Update(c, castagnoli, rec[8:])
}

// RecordSize is the size on disk of a record with an n-byte body.
func RecordSize(n int) int { return headerSize + n }

// markOf returns the sync mark of the record at the start of rec, which
// DecodeRecord has accepted.
func markOf(rec []byte) uint64 { return binary.LittleEndian.Uint64(rec[16:24]) }

// DecodeRecord decodes the record at the start of b. It returns the id, the
// body (a sub-slice of b) and the record's size. It returns ErrTorn when b
// ends inside the record and ErrCorrupt when the record does not check. It
// never allocates and never reads beyond b.
func DecodeRecord(b []byte) (id uint64, body []byte, size int, err error) {
	if len(b) < headerSize {
		return 0, nil, 0, ErrTorn
	}
	n := binary.LittleEndian.Uint32(b[0:4])
	if n > MaxBody {
		return 0, nil, 0, ErrCorrupt
	}
	size = headerSize + int(n)
	if len(b) < size {
		return 0, nil, 0, ErrTorn
	}
	if binary.LittleEndian.Uint32(b[4:8]) != recordCRC(b[:size]) {
		return 0, nil, 0, ErrCorrupt
	}
	id = binary.LittleEndian.Uint64(b[8:16])
	return id, b[headerSize:size], size, nil
}

// nextValid returns the offset of the first record in b, at or after from,
// that decodes, or -1. Recovery uses it to find the records after a bad
// spot, whose sync marks tell a torn last batch from corruption in synced
// data, and to count what --repair drops.
// Random bytes rarely look like a length below MaxBody, so the scan seldom
// computes a CRC.
//
// Runs of zeros (a zeroed sector, the preallocated rest of a segment) are
// skipped in one pass: a header of all zeros never checks (its CRC field
// would have to match the CRC of zeros), so a record has a non-zero byte
// among its first headerSize bytes and starts less than a header before the
// end of a run.
func nextValid(b []byte, from int) int {
	for off := from; off+headerSize <= len(b); off++ {
		if b[off] == 0 {
			j := off
			for j < len(b) && b[j] == 0 {
				j++
			}
			if j-off >= headerSize {
				off = j - headerSize // the loop's off++ makes it j-headerSize+1
				continue
			}
		}
		if _, _, _, err := DecodeRecord(b[off:]); err == nil {
			return off
		}
	}
	return -1
}
