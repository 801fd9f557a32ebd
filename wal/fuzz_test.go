package wal

import (
	"bytes"
	"testing"
)

// FuzzDecodeRecord: the decoder never panics, never reads past its input,
// never allocates, and what it accepts re-encodes to the same bytes.
func FuzzDecodeRecord(f *testing.F) {
	f.Add(AppendRecord(nil, 1, 0, []byte(`{"patientId":1,"timestamp":"t","medication":"m"}`)))
	f.Add(AppendRecord(nil, 1<<52, 1<<40, nil))
	f.Add(make([]byte, headerSize))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	two := AppendRecord(AppendRecord(nil, 5, 0, []byte("a")), 6, 0, []byte("bb"))
	f.Add(two)
	torn := AppendRecord(nil, 7, 64, []byte("ccc"))
	f.Add(torn[:len(torn)-1])
	flipped := AppendRecord(nil, 8, 64, []byte("dddd"))
	flipped[17] ^= 1 // the sync mark is under the CRC too
	f.Add(flipped)
	f.Fuzz(func(t *testing.T, b []byte) {
		allocs := testing.AllocsPerRun(1, func() { DecodeRecord(b) })
		if allocs != 0 {
			t.Fatalf("DecodeRecord allocated %v times", allocs)
		}
		id, body, size, err := DecodeRecord(b)
		if err != nil {
			return
		}
		if size > len(b) || size != RecordSize(len(body)) {
			t.Fatalf("size %d for %d bytes of input", size, len(b))
		}
		if re := AppendRecord(nil, id, markOf(b), body); !bytes.Equal(re, b[:size]) {
			t.Fatalf("re-encoding differs")
		}
		// Recovery's scan over arbitrary bytes terminates within bounds.
		if off := nextValid(b, 1); off >= len(b) {
			t.Fatalf("nextValid returned %d for %d bytes", off, len(b))
		}
	})
}
