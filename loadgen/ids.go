package loadgen

// idStore keeps the ids one connection was answered, for the duplicate check
// at the end of the run. Ids go into chunks that double from 64 to 16,384
// ids, so a connection that gets few answers costs little and one that gets
// millions allocates once every 16,384 ids.
type idStore struct {
	full [][]uint64
	cur  []uint64
	n    int
}

const (
	idChunkMin = 64
	idChunkMax = 16 << 10
)

func (s *idStore) add(id uint64) {
	if len(s.cur) == cap(s.cur) {
		size := idChunkMin
		if s.cur != nil {
			s.full = append(s.full, s.cur)
			size = min(2*cap(s.cur), idChunkMax)
		}
		s.cur = make([]uint64, 0, size)
	}
	s.cur = append(s.cur, id)
	s.n++
}

// appendTo appends the ids to dst.
func (s *idStore) appendTo(dst []uint64) []uint64 {
	for _, c := range s.full {
		dst = append(dst, c...)
	}
	return append(dst, s.cur...)
}

// duplicates sorts ids and returns how many of them repeat an id before
// them (an id answered three times counts 2), and up to 5 of the repeated
// ids.
func duplicates(ids []uint64) (n int, examples []uint64) {
	radixSort(ids)
	for i := 1; i < len(ids); i++ {
		if ids[i] == ids[i-1] {
			n++
			if len(examples) < 5 && (len(examples) == 0 || examples[len(examples)-1] != ids[i]) {
				examples = append(examples, ids[i])
			}
		}
	}
	return n, examples
}

// radixSort sorts a in place: least significant digit first, 16 bits at a
// time, skipping the digits every id shares (ids below 2^32 take two
// passes).
func radixSort(a []uint64) {
	if len(a) < 2 {
		return
	}
	var tmp []uint64
	src := a
	var count [1 << 16]int
	for shift := uint(0); shift < 64; shift += 16 {
		clear(count[:])
		for _, v := range src {
			count[(v>>shift)&0xffff]++
		}
		if count[(src[0]>>shift)&0xffff] == len(src) {
			continue // every id has this digit
		}
		if tmp == nil {
			tmp = make([]uint64, len(a))
		}
		pos := 0
		for i, c := range count {
			count[i] = pos
			pos += c
		}
		for _, v := range src {
			d := (v >> shift) & 0xffff
			tmp[count[d]] = v
			count[d]++
		}
		src, tmp = tmp, src
	}
	if &src[0] != &a[0] {
		copy(a, src)
	}
}
