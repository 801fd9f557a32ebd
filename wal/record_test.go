package wal

import (
	"bytes"
	"errors"
	"testing"
)

// TestRecordRoundTrip: what AppendRecord frames, DecodeRecord returns, with
// its sync mark; any cut is torn and any flipped byte is refused.
func TestRecordRoundTrip(t *testing.T) {
	tests := []struct {
		name     string
		id, mark uint64
		body     []byte
	}{
		{"usage", 1, 0, []byte(`{"patientId":1,"timestamp":"t","medication":"m"}`)},
		{"empty body, zero mark", 1 << 56, 0, nil},
		{"high mark", 7, 1<<48 - 1, []byte("x")},
		{"binary body", 42, 4096, []byte{0, 1, 0, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := AppendRecord([]byte("prefix"), tt.id, tt.mark, tt.body)[len("prefix"):]
			if len(rec) != RecordSize(len(tt.body)) {
				t.Fatalf("framed %d bytes, RecordSize says %d", len(rec), RecordSize(len(tt.body)))
			}
			id, body, size, err := DecodeRecord(append(rec, 0xee)) // followed by more data
			if err != nil || id != tt.id || !bytes.Equal(body, tt.body) || size != len(rec) || markOf(rec) != tt.mark {
				t.Fatalf("DecodeRecord = %d %q %d %v, mark %d", id, body, size, err, markOf(rec))
			}
			for cut := 0; cut < len(rec); cut++ {
				if _, _, _, err := DecodeRecord(rec[:cut]); !errors.Is(err, ErrTorn) {
					t.Fatalf("cut at %d: %v, want ErrTorn", cut, err)
				}
			}
			for i := range rec {
				bad := bytes.Clone(rec)
				bad[i] ^= 0x40
				if _, _, _, err := DecodeRecord(bad); err == nil {
					t.Fatalf("byte %d flipped: accepted", i)
				}
			}
		})
	}
}

// TestNextValid: the scan for the next decodable record skips zero runs and
// garbage, and finds records whose first bytes are zeros.
func TestNextValid(t *testing.T) {
	zeroHeavy := AppendRecord(nil, 1<<56, 0, nil) // 15 leading zero bytes unless the CRC is non-zero
	usage := AppendRecord(nil, 9, 100, []byte(`{"a":1}`))
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	tests := []struct {
		name string
		b    []byte
		from int
		want int
	}{
		{"nothing", make([]byte, 100), 0, -1},
		{"after zeros", cat(make([]byte, 1000), usage), 0, 1000},
		{"after a short zero run", cat(make([]byte, 5), usage), 0, 5},
		{"zero-heavy record after zeros", cat(make([]byte, 1000), zeroHeavy), 0, 1000},
		{"after garbage", cat(bytes.Repeat([]byte{0xff, 1, 2}, 100), usage), 0, 300},
		{"from inside a record", cat(usage, usage), 1, len(usage)},
		{"a torn record is not valid", cat(make([]byte, 64), usage[:len(usage)-1]), 0, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := nextValid(tt.b, tt.from); got != tt.want {
				t.Fatalf("nextValid = %d, want %d", got, tt.want)
			}
		})
	}
}
