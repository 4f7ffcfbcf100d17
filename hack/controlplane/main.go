// Command controlplane runs etcd, kube-apiserver and kube-controller-manager in
// one process on loopback, so numail-operator's tests and `make dev` can use a
// real Kubernetes control plane on a machine without a container engine.
//
// It keeps everything under --data-dir: the etcd data, a CA with a serving
// certificate and an admin client certificate, the service-account signing
// key, and an admin kubeconfig (<data-dir>/kubeconfig). Restarting it with the
// same --data-dir reuses them, so a kubeconfig stays valid across restarts.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	apiserverapp "k8s.io/kubernetes/cmd/kube-apiserver/app"
)

// controllers is the set of kube-controller-manager loops the operator relies
// on: namespace finalisation, garbage collection of owned objects, Deployments
// (and their ReplicaSets), ServiceAccount tokens, and ClusterRole aggregation
// (the member roles the chart ships are aggregated).
var controllers = []string{
	"namespace-controller",
	"garbage-collector-controller",
	"deployment-controller",
	"replicaset-controller",
	"serviceaccount-controller",
	"serviceaccount-token-controller",
	"clusterrole-aggregation-controller",
	"resourcequota-controller",
}

type options struct {
	dataDir   string
	port      int
	etcdPort  int
	verbosity int
	noFsync   bool
}

func main() {
	var o options
	flag.StringVar(&o.dataDir, "data-dir", "", "directory for etcd data, certificates and the admin kubeconfig (required)")
	flag.IntVar(&o.port, "port", 0, "kube-apiserver secure port on 127.0.0.1 (0 picks a free one)")
	flag.IntVar(&o.etcdPort, "etcd-port", 0, "etcd client port on 127.0.0.1 (0 picks a free one)")
	flag.IntVar(&o.verbosity, "v", 0, "klog verbosity for kube-apiserver and kube-controller-manager")
	flag.BoolVar(&o.noFsync, "unsafe-no-fsync", false, "skip fsync in etcd: faster tests, data lost on a machine crash")
	flag.Parse()
	if o.dataDir == "" {
		fmt.Fprintln(os.Stderr, "controlplane: --data-dir is required; give a directory to keep etcd data and the kubeconfig in")
		os.Exit(2)
	}
	if err := run(o); err != nil {
		fmt.Fprintf(os.Stderr, "controlplane: %v\n", err)
		os.Exit(1)
	}
}

func run(o options) error {
	dataDir, err := filepath.Abs(o.dataDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return fmt.Errorf("create data dir: %w", err)
	}
	if o.port == 0 {
		if o.port, err = freePort(); err != nil {
			return err
		}
	}
	if o.etcdPort == 0 {
		if o.etcdPort, err = freePort(); err != nil {
			return err
		}
	}
	peerPort, err := freePort()
	if err != nil {
		return err
	}

	pki, err := ensurePKI(filepath.Join(dataDir, "pki"))
	if err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	server := fmt.Sprintf("https://127.0.0.1:%d", o.port)
	kubeconfig := filepath.Join(dataDir, "kubeconfig")
	if err := writeKubeconfig(kubeconfig, server, pki); err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}

	etcd, err := startEtcd(filepath.Join(dataDir, "etcd"), o.etcdPort, peerPort, o.noFsync)
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	// etcd is closed only on the clean path below: Close waits for clients,
	// and after a failure the apiserver's clients may never go away.

	apiserver := apiserverapp.NewAPIServerCommand()
	apiserver.SetArgs(apiserverArgs(o, dataDir, pki))
	apiDone := make(chan error, 1)
	go func() { apiDone <- apiserver.Execute() }()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := waitReady(ctx, server, pki, apiDone); err != nil {
		return err
	}

	kcmDone := make(chan error, 1)
	go func() { kcmDone <- runControllerManager(ctx, controllerManagerArgs(o, kubeconfig, pki)) }()

	if err := writeState(filepath.Join(dataDir, "state.json"), server, kubeconfig, o.etcdPort); err != nil {
		return err
	}
	fmt.Printf("controlplane ready: server=%s kubeconfig=%s\n", server, kubeconfig)

	for {
		select {
		case err := <-apiDone:
			// kube-apiserver installs its own SIGTERM handler and returns once
			// it has drained; that is the normal way out.
			closeEtcd(etcd)
			return err
		case err := <-kcmDone:
			if ctx.Err() != nil {
				kcmDone = nil // shutting down: wait for the apiserver to drain
				continue
			}
			return fmt.Errorf("kube-controller-manager exited: %w", err)
		case err := <-etcd.Err():
			return fmt.Errorf("etcd failed: %w", err)
		}
	}
}

func apiserverArgs(o options, dataDir string, pki *pkiFiles) []string {
	return []string{
		"--etcd-servers=" + fmt.Sprintf("http://127.0.0.1:%d", o.etcdPort),
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(o.port),
		"--cert-dir=" + filepath.Join(dataDir, "apiserver-certs"),
		"--tls-cert-file=" + pki.servingCert,
		"--tls-private-key-file=" + pki.servingKey,
		"--client-ca-file=" + pki.caCert,
		"--service-cluster-ip-range=10.96.0.0/24",
		"--allow-privileged=true",
		"--authorization-mode=RBAC",
		// PodSecurity is in the default admission set; naming it keeps it on
		// even if a future default changes.
		"--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,PodSecurity,DefaultStorageClass,ResourceQuota,LimitRanger",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + pki.saPublic,
		"--service-account-signing-key-file=" + pki.saPrivate,
		"--api-audiences=https://kubernetes.default.svc.cluster.local",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		// The kubernetes Service can't point at a loopback address, and
		// nothing in the tests routes to it.
		"--endpoint-reconciler-type=none",
		"--v=" + strconv.Itoa(o.verbosity),
	}
}

func controllerManagerArgs(o options, kubeconfig string, pki *pkiFiles) []string {
	joined := ""
	for i, c := range controllers {
		if i > 0 {
			joined += ","
		}
		joined += c
	}
	return []string{
		"--kubeconfig=" + kubeconfig,
		"--controllers=" + joined,
		"--leader-elect=false",
		"--secure-port=0",
		"--service-account-private-key-file=" + pki.saPrivate,
		"--root-ca-file=" + pki.caCert,
		"--use-service-account-credentials=false",
		"--concurrent-gc-syncs=5",
		// Quotas on custom resources (count/mailboxes.numail.ai) get their first usage
		// only on a full resync; the default 5 minutes is too slow for tests and dev.
		"--resource-quota-sync-period=10s",
		"--v=" + strconv.Itoa(o.verbosity),
	}
}

func startEtcd(dir string, clientPort, peerPort int, noFsync bool) (*embed.Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Name = "numail-controlplane"
	cfg.Dir = dir
	client := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", clientPort)}
	peer := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", peerPort)}
	cfg.ListenClientUrls = []url.URL{client}
	cfg.AdvertiseClientUrls = []url.URL{client}
	cfg.ListenPeerUrls = []url.URL{peer}
	cfg.AdvertisePeerUrls = []url.URL{peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{filepath.Join(filepath.Dir(dir), "etcd.log")}
	cfg.UnsafeNoFsync = noFsync
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, errors.New("etcd not ready after 60s")
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func writeState(path, server, kubeconfig string, etcdPort int) error {
	b, err := json.MarshalIndent(map[string]any{
		"server":     server,
		"kubeconfig": kubeconfig,
		"etcd":       fmt.Sprintf("http://127.0.0.1:%d", etcdPort),
		"pid":        os.Getpid(),
	}, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}

func closeEtcd(e *embed.Etcd) {
	done := make(chan struct{})
	go func() { e.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
	}
}
