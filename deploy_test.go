package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	natsserver "github.com/nats-io/nats-server/v2/server"
)

// checkNATSConfigs parses the three NATS node configs in dir with
// nats-server's own parser and checks that they make one 3-node JetStream
// cluster: distinct names and ports, one cluster name, every node routing
// to every node.
func checkNATSConfigs(t *testing.T, dir string) {
	t.Helper()
	names, ports := map[string]bool{}, map[int]bool{}
	var routeSets []string
	for i := 1; i <= 3; i++ {
		path := filepath.Join(dir, fmt.Sprintf("nats-%d.conf", i))
		opts, err := natsserver.ProcessConfigFile(path)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if !opts.JetStream || opts.StoreDir == "" || opts.Cluster.Name != "busyapi" || opts.ServerName == "" {
			t.Fatalf("%s: jetstream %v, store_dir %q, cluster %q, server_name %q", path, opts.JetStream, opts.StoreDir, opts.Cluster.Name, opts.ServerName)
		}
		if names[opts.ServerName] {
			t.Fatalf("%s: server_name %q used twice", path, opts.ServerName)
		}
		names[opts.ServerName] = true
		for _, p := range []int{opts.Port, opts.Cluster.Port, opts.HTTPPort} {
			if ports[p] {
				t.Fatalf("%s: port %d used twice", path, p)
			}
			ports[p] = true
		}
		var routes []string
		for _, u := range opts.Routes {
			routes = append(routes, u.Host)
		}
		if len(routes) != 3 || !strings.Contains(strings.Join(routes, " "), fmt.Sprintf(":%d", opts.Cluster.Port)) {
			t.Fatalf("%s: routes %v do not name the 3 nodes", path, routes)
		}
		routeSets = append(routeSets, strings.Join(routes, " "))
		// nats-server's own checks of the options, as at start.
		opts.StoreDir = t.TempDir()
		if _, err := natsserver.NewServer(opts); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
	}
	if routeSets[0] != routeSets[1] || routeSets[1] != routeSets[2] {
		t.Fatalf("the nodes route to different sets: %q", routeSets)
	}
}

// nginxTest runs nginx -t on conf, with a temporary prefix directory, or
// skips when nginx is not installed.
func nginxTest(t *testing.T, conf string) {
	t.Helper()
	nginx, err := exec.LookPath("nginx")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/nginx"); serr != nil {
			t.Skip("nginx is not installed: its config is not checked (apt-get install nginx)")
		}
		nginx = "/usr/sbin/nginx"
	}
	abs, err := filepath.Abs(conf)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(nginx, "-t", "-p", t.TempDir(), "-c", abs, "-e", "stderr").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "test is successful") {
		t.Fatalf("nginx -t -c %s: %v\n%s", conf, err, out)
	}
}

// TestDeployConfigs checks deploy/: the NATS cluster configs parse and make
// one cluster, nginx accepts its config (when installed), deploy/run.sh is
// valid bash, and its render step writes an upstream of N instances that
// nginx accepts too.
func TestDeployConfigs(t *testing.T) {
	t.Run("nats", func(t *testing.T) { checkNATSConfigs(t, "deploy/nats") })
	t.Run("run.sh syntax", func(t *testing.T) {
		if out, err := exec.Command("bash", "-n", "deploy/run.sh").CombinedOutput(); err != nil {
			t.Fatalf("bash -n deploy/run.sh: %v\n%s", err, out)
		}
	})
	dir := t.TempDir()
	t.Run("render", func(t *testing.T) {
		if out, err := exec.Command("bash", "deploy/run.sh", "render", "5", dir).CombinedOutput(); err != nil {
			t.Fatalf("deploy/run.sh render: %v\n%s", err, out)
		}
		b, err := os.ReadFile(filepath.Join(dir, "nginx.conf"))
		if err != nil {
			t.Fatal(err)
		}
		for i := 1; i <= 6; i++ {
			has := strings.Contains(string(b), fmt.Sprintf("server 127.0.0.1:%d ", 3000+i))
			if has != (i <= 5) {
				t.Fatalf("rendered upstream for 5 instances: server 300%d present %v:\n%s", i, has, b)
			}
		}
		checkNATSConfigs(t, dir)
	})
	t.Run("nginx -t", func(t *testing.T) {
		nginxTest(t, "deploy/nginx.conf")
		nginxTest(t, filepath.Join(dir, "nginx.conf"))
	})
}
