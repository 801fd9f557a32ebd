package server

import (
	"context"
	"io"
	"strconv"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/valyala/fasthttp"

	"github.com/busyapi/busyapi/cluster"
	"github.com/busyapi/busyapi/idlease"
	"github.com/busyapi/busyapi/shard"
)

// Scale-out mode (Config.NATS): the NATS connection, the Forwarder of the
// log's usages to the stream, and the hook for cluster-wide ids.

// startCluster connects to NATS and sets up the Forwarder, once the log is
// recovered and before the shards take writes (the Forwarder counts the
// backlog after its cursor). It never waits for NATS. scfg is the shards'
// configuration, for the id source.
func (s *Server) startCluster(scfg *shard.Config) error {
	conn, err := cluster.Dial(s.cfg.NATS, s.log)
	if err != nil {
		return err
	}
	fwd, err := cluster.NewForwarder(s.wal, s.cfg.DataDir, conn, s.log)
	if err != nil {
		conn.Close()
		return err
	}
	s.leaseClusterIDs(conn, scfg)
	s.nats, s.fwd = conn, fwd
	return nil
}

// leaseClusterIDs makes the shards take their ids from ranges leased
// cluster-wide from the JetStream key-value bucket Config.NATS.IDBucket,
// with compare-and-set (package idlease), so no two instances ever hand out
// the same id. The local durable lease stays: each range's end is written
// to it before the range is used, and no range starts below what this
// instance leased or stored before (scfg.FirstID). The bucket is bound (and
// created, unless NoCreate) on the first lease, not here, so a start never
// waits for NATS; until a lease succeeds, POSTs answer 503 with
// Retry-After, and the shards retry with backoff.
func (s *Server) leaseClusterIDs(conn *cluster.Conn, scfg *shard.Config) {
	var leaser *idlease.Leaser // LeaseBlocks is never called concurrently
	block, floor, nc := scfg.IDBlock, scfg.FirstID, s.cfg.NATS
	scfg.LeaseBlocks = func(n uint64) (uint64, error) {
		if leaser == nil {
			js, err := conn.JetStream()
			if err != nil {
				return 0, err
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			kv, err := idlease.Bucket(ctx, js, nc.IDBucket, nc.Replicas, !nc.NoCreate)
			cancel()
			if err != nil {
				return 0, err
			}
			leaser = idlease.New(kv, block, floor)
		}
		return leaser.Lease(n)
	}
}

// startForwarding starts the Forwarder, once the shards run.
func (s *Server) startForwarding() {
	if s.fwd != nil {
		s.fwd.Start()
	}
}

// stopCluster stops forwarding (forwarding what the log still holds while
// ctx lasts and NATS is reachable) and closes the NATS connection. The
// shards must have stopped; the log is still open.
func (s *Server) stopCluster(ctx context.Context) error {
	if s.fwd == nil {
		return nil
	}
	err := s.fwd.Close(ctx)
	if err != nil {
		s.log.Error("cannot record the forward cursor; the next start forwards the unrecorded part again", "err", err)
	}
	var st cluster.Stats
	s.fwd.UpdateStats(&st)
	s.log.Info("forwarding stopped", "published", st.Published, "lag_usages", st.LagUsages)
	s.nats.Close()
	return err
}

// forwardKeep tells retention what the forward cursor has not passed; nil
// outside scale-out mode.
func (s *Server) forwardKeep() func(int) uint64 {
	if s.fwd == nil {
		return nil
	}
	return s.fwd.Keep
}

// writeClusterStats writes the scale-out metrics.
func writeClusterStats(w io.Writer, st *Stats) {
	f := &st.Forward
	metrics.WriteGaugeUint64(w, "busyapi_forward_lag_usages", f.LagUsages)
	metrics.WriteGaugeFloat64(w, "busyapi_forward_lag_seconds", f.LagSeconds)
	counter(w, "busyapi_forward_published_total", f.Published)
	counter(w, "busyapi_forward_duplicates_total", f.Duplicates)
	counter(w, "busyapi_forward_publish_errors_total", f.PublishErrors)
	connected := uint64(0)
	if f.Connected {
		connected = 1
	}
	metrics.WriteGaugeUint64(w, "busyapi_nats_connected", connected)
	counter(w, "busyapi_id_lease_roundtrips_total", st.Shard.LeaseRoundTrips)
}

// readyBody answers a ready /readyz: {"status":"ok"}, and in scale-out mode
// the forward lag, the NATS connection's state and what holds forwarding
// up, if anything. Lagging does not make the instance unready: its usages
// wait in the log.
func (s *Server) readyBody(ctx *fasthttp.RequestCtx) {
	if s.fwd == nil {
		ctx.Response.SetBody(strStatusOK)
		return
	}
	var st cluster.Stats
	s.fwd.UpdateStats(&st)
	b := append(make([]byte, 0, 128), `{"status":"ok","forward_lag_usages":`...)
	b = strconv.AppendUint(b, st.LagUsages, 10)
	b = append(b, `,"forward_lag_seconds":`...)
	b = strconv.AppendFloat(b, st.LagSeconds, 'f', 3, 64)
	b = append(b, `,"nats":"`...)
	if st.Connected {
		b = append(b, `connected"`...)
	} else {
		b = append(b, `disconnected"`...)
	}
	if st.Problem != "" {
		b = appendJSONString(append(b, `,"forward_error":`...), st.Problem)
	}
	b = append(b, '}')
	ctx.Response.SetBody(b)
}
