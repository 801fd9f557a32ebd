// Package idlease leases ranges of ids cluster-wide from a NATS JetStream
// key-value bucket, with compare-and-set, so that any number of busyapi
// instances never hand out the same id.
//
// The bucket holds one key, whose value is the lowest id no instance has
// leased yet, in decimal. Lease reads it, moves it past the range it takes
// with an update conditional on the revision it read, and retries on a
// conflict. The value counts ids, not blocks, so instances with different
// id block sizes share it safely. A bucket that was lost (deleted and
// created again) cannot make an instance reuse its own ids: Lease never
// goes below the instance's floor, its own durable lease bound.
package idlease

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Key is the bucket key holding the next free id.
const Key = "next-id"

// Bucket returns the key-value bucket name, creating it (with replicas
// copies, history 1) if it is missing and create is set.
func Bucket(ctx context.Context, js jetstream.JetStream, name string, replicas int, create bool) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, name)
	if err == nil {
		return kv, nil
	}
	if !errors.Is(err, jetstream.ErrBucketNotFound) || !create {
		return nil, fmt.Errorf("id lease bucket %q: %w", name, err)
	}
	kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      name,
		Description: "busyapi: the next id no instance has leased",
		History:     1,
		Replicas:    max(replicas, 1),
		Storage:     jetstream.FileStorage,
	})
	if errors.Is(err, jetstream.ErrBucketExists) {
		kv, err = js.KeyValue(ctx, name) // another instance created it first
	}
	if err != nil {
		return nil, fmt.Errorf("cannot create id lease bucket %q: %w", name, err)
	}
	return kv, nil
}

// Leaser leases blocks of ids for one instance.
type Leaser struct {
	kv      jetstream.KeyValue
	block   uint64
	floor   uint64
	timeout time.Duration
}

// New returns a Leaser of blocks of block ids (block >= 1) that never
// leases an id below floor (>= 1): the instance's own local lease bound and
// highest recovered id.
func New(kv jetstream.KeyValue, block, floor uint64) *Leaser {
	return &Leaser{kv: kv, block: max(block, 1), floor: max(floor, 1), timeout: 5 * time.Second}
}

// ErrCorrupt is returned when the bucket's value is not an id.
var ErrCorrupt = errors.New("idlease: the bucket's next id is not a decimal number")

// Lease reserves n blocks of ids and returns the first block's number: the
// ids (b*block, (b+n)*block] are this instance's alone. It is what
// shard.Config.LeaseBlocks expects. It gives up after a few seconds, so the
// caller can back off and answer 503 meanwhile.
func (l *Leaser) Lease(n uint64) (uint64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), l.timeout)
	defer cancel()
	for attempt := 0; ; attempt++ {
		next, rev, err := l.read(ctx)
		if err != nil {
			return 0, err
		}
		next = max(next, l.floor)
		start := (next - 1 + l.block - 1) / l.block // first whole block at or above next
		end := (start+n)*l.block + 1
		value := []byte(strconv.FormatUint(end, 10))
		if rev == 0 {
			_, err = l.kv.Create(ctx, Key, value)
		} else {
			_, err = l.kv.Update(ctx, Key, value, rev)
		}
		if err == nil {
			return start, nil
		}
		if !errors.Is(err, jetstream.ErrKeyRevisionMismatch) && !errors.Is(err, jetstream.ErrKeyExists) {
			return 0, fmt.Errorf("idlease: %w", err)
		}
		// Another instance leased first: read again, after a short random
		// pause so that contenders spread out.
		pause := time.Duration(rand.Int64N(int64(time.Millisecond) << min(attempt, 5)))
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("idlease: gave up after %d conflicts: %w", attempt+1, ctx.Err())
		case <-time.After(pause):
		}
	}
}

// read returns the next free id and its revision, or 0, 0 if the key does
// not exist yet.
func (l *Leaser) read(ctx context.Context) (uint64, uint64, error) {
	e, err := l.kv.Get(ctx, Key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, fmt.Errorf("idlease: %w", err)
	}
	v, err := strconv.ParseUint(string(e.Value()), 10, 64)
	if err != nil || v == 0 {
		return 0, 0, fmt.Errorf("%w: %q", ErrCorrupt, e.Value())
	}
	return v, e.Revision(), nil
}
