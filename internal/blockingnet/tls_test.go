package blockingnet

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// selfSigned returns a server certificate for "localhost" and a pool that trusts it.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"}, DNSNames: []string{"localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pool
}

// rediss:// URLs: the dialer puts TLS over its blocking connection.
func TestDialerTLS(t *testing.T) {
	cert, pool := selfSigned(t)
	path := filepath.Join(t.TempDir(), "tls.sock")
	raw, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	l := tls.NewListener(raw, &tls.Config{Certificates: []tls.Certificate{cert}})
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c) // echo
			}()
		}
	}()
	ctx := context.Background()
	c, err := Dialer(time.Second, &tls.Config{RootCAs: pool, ServerName: "localhost"})(ctx, "unix", path)
	if err != nil {
		t.Fatalf("TLS dial: %v", err)
	}
	defer c.Close()
	tc, ok := c.(*tls.Conn)
	if !ok {
		t.Fatalf("dialer returned %T, want *tls.Conn", c)
	}
	if _, ok := tc.NetConn().(*Conn); !ok {
		t.Fatalf("TLS runs over %T, want the blocking Conn", tc.NetConn())
	}
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo over TLS: %q %v", buf, err)
	}
	// A certificate the client does not trust fails the dial.
	if _, err := Dialer(time.Second, &tls.Config{ServerName: "localhost"})(ctx, "unix", path); err == nil {
		t.Fatal("dial with an untrusted certificate succeeded")
	}
	// A peer that never answers the handshake: the dial timeout ends it.
	mute, err := net.Listen("unix", filepath.Join(t.TempDir(), "mute.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer mute.Close()
	start := time.Now()
	if _, err := Dialer(200*time.Millisecond, &tls.Config{RootCAs: pool, ServerName: "localhost"})(ctx, "unix", mute.Addr().String()); err == nil {
		t.Fatal("TLS dial to a mute peer succeeded")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("TLS dial to a mute peer took %v, want about the 200ms timeout", d)
	}
}
