package main

import (
	"fmt"
	"os"
	"runtime"
	"time"

	"github.com/torbento/bento/internal/control"
	"github.com/torbento/bento/internal/server"
)

// control carries out one request from the control socket.
func (d *daemon) control(r control.Request) (any, error) {
	switch r.Cmd {
	case "status":
		p := d.policy()
		st := d.srv.Status()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return control.Status{Version: server.Version, PID: os.Getpid(), Uptime: time.Since(d.started), Nickname: p.Nickname, Onion: d.srv.Onion(),
			Draining: d.srv.Draining(), Instances: st.Instances, MaxInstances: p.Aggregate.Instances, MemoryLimit: d.srv.TotalMemory(), CPULimit: p.Aggregate.CPU,
			InFlight: st.InFlight, InFlightLimit: st.InFlightLimit, HeapBytes: ms.HeapInuse, Goroutines: runtime.NumGoroutine(), Listeners: listeners(st.Listeners)}, nil
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

func listeners(ls []server.ListenerStatus) []control.ListenerStatus {
	out := make([]control.ListenerStatus, len(ls))
	for i, l := range ls {
		out[i] = control.ListenerStatus{Name: l.Name, Stats: l.Stats}
	}
	return out
}
