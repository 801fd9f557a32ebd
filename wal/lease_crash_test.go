package wal

import (
	"errors"
	"testing"
	"time"

	"github.com/busyapi/busyapi/shard"
)

// TestLeaseCrash simulates crashes around id leasing: the process dies right
// after a lease fsync before any id of the block is used, or in the middle
// of a block. What a restart reads from the lease file is above every id
// handed out, so no id is reused.
func TestLeaseCrash(t *testing.T) {
	f := func(name string, take int) {
		t.Helper()
		dir := t.TempDir()
		lease, err := OpenLease(dir)
		if err != nil {
			t.Fatal(err)
		}
		set := shard.New(shard.Config{Shards: 2, IDBlock: 16, LeaseIDs: lease.Extend, LeaseWindow: 2})
		var maxID uint64
		for i := 0; i < take; i++ {
			id, _, err := set.Put(uint64(i), []byte("x"))
			for errors.Is(err, shard.ErrIDsUnavailable) {
				// The window is tiny: wait for the background lease.
				time.Sleep(time.Millisecond)
				id, _, err = set.Put(uint64(i), []byte("x"))
			}
			if err != nil {
				t.Fatalf("%s: Put: %v", name, err)
			}
			maxID = max(maxID, id)
		}
		// Crash: nothing is closed or synced beyond what already was; the
		// restart reads the lease file afresh.
		again, err := OpenLease(dir)
		if err != nil {
			t.Fatal(err)
		}
		if again.Bound() == 0 || again.Bound() <= maxID {
			t.Fatalf("%s: durable lease bound %d is not above the highest id handed out, %d", name, again.Bound(), maxID)
		}
		set2 := shard.New(shard.Config{Shards: 2, IDBlock: 16, FirstID: again.Bound(), LeaseIDs: again.Extend})
		id, _, err := set2.Put(0, []byte("y"))
		if err != nil || id <= maxID {
			t.Fatalf("%s: first id after restart %d (%v), want above %d", name, id, err, maxID)
		}
		set.Close()
		set2.Close()
		lease.Close()
		again.Close()
	}
	f("crash after the lease fsync, before any id is used", 0)
	f("crash in the middle of the first block", 5)
	f("crash in the middle of a later block", 16*2+7)
	f("crash at a block boundary", 16*4)
}
