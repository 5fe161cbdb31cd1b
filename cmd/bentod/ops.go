package main

import (
	"fmt"
	"os"
	"runtime"
	"time"

	"github.com/torbento/bento/internal/control"
	"github.com/torbento/bento/internal/server"
)

// StatusReply is bentoctl status's answer.
type StatusReply struct {
	Version       string                  `json:"version"`
	PID           int                     `json:"pid"`
	Uptime        time.Duration           `json:"uptime_ns"`
	Nickname      string                  `json:"nickname,omitempty"`
	Onion         string                  `json:"onion,omitempty"`
	Draining      bool                    `json:"draining"`
	Instances     int                     `json:"instances"`
	MaxInstances  int                     `json:"max_instances"`
	MemoryLimit   int64                   `json:"memory_limit_bytes"`
	CPULimit      float64                 `json:"cpu_limit_cores"`
	InFlight      int64                   `json:"in_flight_bytes"`
	InFlightLimit int64                   `json:"in_flight_limit_bytes"`
	HeapBytes     uint64                  `json:"heap_bytes"`
	Goroutines    int                     `json:"goroutines"`
	Listeners     []server.ListenerStatus `json:"listeners"`
}

// control carries out one request from the control socket.
func (d *daemon) control(r control.Request) (any, error) {
	switch r.Cmd {
	case "status":
		p := d.policy()
		st := d.srv.Status()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return StatusReply{Version: server.Version, PID: os.Getpid(), Uptime: time.Since(d.started), Nickname: p.Nickname, Onion: d.srv.Onion(),
			Draining: d.srv.Draining(), Instances: st.Instances, MaxInstances: p.Aggregate.Instances, MemoryLimit: p.Aggregate.Memory, CPULimit: p.Aggregate.CPU,
			InFlight: st.InFlight, InFlightLimit: st.InFlightLimit, HeapBytes: ms.HeapInuse, Goroutines: runtime.NumGoroutine(), Listeners: st.Listeners}, nil
	case "ls":
		return d.srv.List(), nil
	case "end":
		if r.ID == "" {
			return nil, fmt.Errorf("end needs an instance id (bentoctl ls lists them)")
		}
		if err := d.srv.EndInstance(r.ID, r.Reason); err != nil {
			return nil, err
		}
		return "ended", nil
	case "drain":
		on := r.On == nil || *r.On
		d.srv.SetDraining(on)
		return map[string]bool{"draining": on}, nil
	case "reload":
		if err := d.reload(); err != nil {
			return nil, err
		}
		return "reloaded", nil
	case "stop":
		select {
		case d.stopReq <- "bentoctl stop":
		default:
		}
		return "stopping", nil
	}
	return nil, fmt.Errorf("unknown command %q (status, ls, end, drain, reload, stop)", r.Cmd)
}
