# `make install` / `make uninstall`: the Helm chart into the local environment, as users install it.
# Included from the Makefile. Override for another cluster:
#   make install HELM_VALUES= KUBECONFIG=~/.kube/config HELM_NAMESPACE=ml-platform
HELM_RELEASE ?= finetune-operator
HELM_NAMESPACE ?= finetune-operator
HELM_CHART := helm/finetune-operator
HELM_VALUES ?= helm/values-local.yaml
HELM_ARGS ?=
# The local environment's kubectl/helm/KUBECONFIG, when it is there.
HELM_ENV = [ -f .dev/env ] && . .dev/env;

.PHONY: install
install: cluster-up
	@$(HELM_ENV) helm lint --strict $(HELM_CHART) $(if $(HELM_VALUES),-f $(HELM_VALUES)) >/dev/null
	@# --take-ownership: the CRD may already be there from `kubectl apply -f crds/` (tests, demo).
	$(HELM_ENV) helm upgrade --install $(HELM_RELEASE) $(HELM_CHART) \
	  --namespace $(HELM_NAMESPACE) --create-namespace --take-ownership \
	  $(if $(HELM_VALUES),-f $(HELM_VALUES)) --wait --timeout 5m $(HELM_ARGS)
	@$(HELM_ENV) kubectl -n $(HELM_NAMESPACE) get pods -l app.kubernetes.io/instance=$(HELM_RELEASE)

# The CRDs and every FineTuneJob (and the data in S3) stay: see the chart's NOTES.
.PHONY: uninstall
uninstall:
	$(HELM_ENV) helm uninstall $(HELM_RELEASE) --namespace $(HELM_NAMESPACE) --wait --ignore-not-found
