package live

import (
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustral/clustral/integration/harness"
)

// TestLiveViewPage: clustral ui in real Chromium. A deep link opens a
// namespace; a pod created with kubectl appears without a reload; its
// page follows its log, and lines appended to it appear too. The page
// breaks none of its CSP and fails no request.
func TestLiveViewPage(t *testing.T) {
	ctx := t.Context()
	m := startLive(t)
	ns := suite.NewNamespace(t)
	a := suite.NewUser(t, alice)
	a.MustLogin()
	m.Assign(t, alice.Email, harness.ViewerRole.Name)
	a.MustUp()

	link := a.StartUI(t, harness.MeshCluster)
	u, err := url.Parse(link)
	if err != nil {
		t.Fatal(err)
	}
	// The token is good for any path: straight to the namespace.
	u.Path = "/" + harness.MeshCluster + "/ns/" + ns
	chrome := harness.StartChrome(t, harness.ChromeOptions{})
	tab := chrome.NewTab()
	tab.Do(t, chromedp.Navigate(u.String()), chromedp.WaitVisible(chromedp.CSS(`#status`)))
	poll(t, tab, `document.getElementById('status').textContent === 'live'`, "the page to be live")

	pod := "api-7c9"
	kw := suite.KWOK(t)
	if _, err := kw.CreatePod(ctx, harness.FakePod(ns, pod)); err != nil {
		t.Fatal(err)
	}
	logFile := filepath.Join(t.TempDir(), "api.log")
	if err := harness.WriteCRILog(logFile, "first line", "second line"); err != nil {
		t.Fatal(err)
	}
	if err := kw.SetLogs(ctx, ns, pod, logFile, true); err != nil {
		t.Fatal(err)
	}
	podLink := `a[href="/` + harness.MeshCluster + `/ns/` + ns + `/pods/` + pod + `"]`
	tab.Do(t, chromedp.WaitVisible(chromedp.CSS(podLink))) // no reload: the stream brought it
	poll(t, tab, `[...document.querySelectorAll('td .pill')].some(e => e.textContent === 'Running')`, "the pod to run")
	tab.Do(t, chromedp.Click(chromedp.CSS(podLink)), chromedp.WaitVisible(chromedp.CSS(`pre.logs`)))
	poll(t, tab, `document.querySelector('pre.logs').textContent.includes('second line')`, "the pod's log")
	if err := harness.AppendCRILog(logFile, "third line"); err != nil {
		t.Fatal(err)
	}
	poll(t, tab, `document.querySelector('pre.logs').textContent.includes('third line')`, "a line appended to the log")

	// A deep link works on its own once the browser has its session.
	tab.Do(t, chromedp.Navigate("http://"+u.Host+"/"+harness.MeshCluster+"/ns/"+ns+"/pods/"+pod))
	poll(t, tab, `document.querySelector('h1') !== null && document.querySelector('h1').textContent === '`+pod+`'`, "the pod's page from a deep link")
	// From the top: clusters → namespaces → the namespace's workloads.
	tab.Do(t,
		chromedp.Navigate("http://"+u.Host+"/"),
		chromedp.Click(chromedp.CSS(`main a[href="/`+harness.MeshCluster+`"]`)),
		chromedp.Click(chromedp.CSS(`main a[href="/`+harness.MeshCluster+`/ns/`+ns+`"]`)),
		chromedp.WaitVisible(chromedp.CSS(podLink)),
	)
	labels := map[string]string{"app": "web"}
	d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "registry.invalid/fake:latest"}}}}}}
	if _, err := suite.Env.APIServer.Client().AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	poll(t, tab, `[...document.querySelectorAll('td')].some(e => e.textContent === 'Deployment') && [...document.querySelectorAll('td')].some(e => e.textContent === 'web')`, "the new deployment among the workloads")

	for _, p := range tab.Problems() {
		t.Errorf("page problem: %s", p)
	}
}

// poll waits until expr is true in tab, and fails t with the page's text
// if it is not within 30 s.
func poll(t *testing.T, tab *harness.Tab, expr, what string) {
	t.Helper()
	if _, err := chromedp.Run(tab.Ctx, chromedp.Poll[bool](expr, chromedp.WithPollingTimeout(30*time.Second))); err != nil {
		body, _ := chromedp.Run(tab.Ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
		t.Fatalf("waiting for %s: %v; the page reads:\n%s", what, err, harness.LastLines(body, 30))
	}
}
