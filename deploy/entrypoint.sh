#!/bin/sh
# camserve's container entrypoint: the images run it, and so does the loopback rehearsal
# (deploy/rehearsal.py), with the same arguments; only the environment differs (ports, directories).
#
#   entrypoint.sh serve            TorchServe with deploy/torchserve/config.properties, in the foreground
#   entrypoint.sh proxy            the pod's nginx auth proxy (deploy/nginx/proxy.conf), in the foreground
#   entrypoint.sh health [--live]  probe TorchServe's /ping with its own key (exit 0 = healthy; with --live,
#                                  any HTTP answer counts: /ping says 500 while workers are loading)
#   entrypoint.sh app [FLAGS]      the Gradio app (python -m gradio_app), token from CAMSERVE_TOKEN_FILE
#   entrypoint.sh config           print the TorchServe config `serve` would use, and exit
#
# Environment (defaults are the pod's values):
#   CAMSERVE_MODEL_STORE         .mar files loaded at start                 /opt/camserve/model_store
#   CAMSERVE_WORKDIR             TorchServe's working and temp directory    /tmp/camserve
#   CAMSERVE_RUN_DIR             shared by TorchServe and the proxy         /run/camserve
#   CAMSERVE_INFERENCE_PORT / _MANAGEMENT_PORT / _METRICS_PORT   TorchServe, on 127.0.0.1  8080 / 8081 / 8082
#   CAMSERVE_GRPC_INFERENCE_PORT / _GRPC_MANAGEMENT_PORT          on 127.0.0.1              7070 / 7071
#   CAMSERVE_WORKER_PORT         first backend worker port                  9000
#   CAMSERVE_PROXY_ADDRESS       address the proxy listens on               0.0.0.0
#   CAMSERVE_PROXY_PORT / _PROXY_HEALTH_PORT / _PROXY_METRICS_PORT          8000 / 8086 / 9082
#   CAMSERVE_PROXY_DIR           nginx's prefix, pid, temp files, rendered config   /tmp/nginx
#   CAMSERVE_TOKEN_FILE          the clients' shared token (a mounted Secret)  /etc/camserve/token/token
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
MODEL_STORE=${CAMSERVE_MODEL_STORE:-/opt/camserve/model_store}
WORKDIR=${CAMSERVE_WORKDIR:-/tmp/camserve}
RUN_DIR=${CAMSERVE_RUN_DIR:-/run/camserve}
INFERENCE_PORT=${CAMSERVE_INFERENCE_PORT:-8080}
MANAGEMENT_PORT=${CAMSERVE_MANAGEMENT_PORT:-8081}
METRICS_PORT=${CAMSERVE_METRICS_PORT:-8082}
GRPC_INFERENCE_PORT=${CAMSERVE_GRPC_INFERENCE_PORT:-7070}
GRPC_MANAGEMENT_PORT=${CAMSERVE_GRPC_MANAGEMENT_PORT:-7071}
WORKER_PORT=${CAMSERVE_WORKER_PORT:-9000}
PROXY_ADDRESS=${CAMSERVE_PROXY_ADDRESS:-0.0.0.0}
PROXY_PORT=${CAMSERVE_PROXY_PORT:-8000}
PROXY_HEALTH_PORT=${CAMSERVE_PROXY_HEALTH_PORT:-8086}
PROXY_METRICS_PORT=${CAMSERVE_PROXY_METRICS_PORT:-9082}
PROXY_DIR=${CAMSERVE_PROXY_DIR:-/tmp/nginx}
TOKEN_FILE=${CAMSERVE_TOKEN_FILE:-/etc/camserve/token/token}
UPSTREAM_AUTH=upstream-auth.conf  # in RUN_DIR: the inference key as an nginx directive, mode 0600

log() { printf 'camserve-entrypoint: %s\n' "$*" >&2; }
die() { log "$*"; exit 64; }

is_port() { case $1 in '' | *[!0-9]*) return 1 ;; esac; [ "$1" -ge 1 ] && [ "$1" -le 65535 ]; }
is_path() { case $1 in /*) ;; *) return 1 ;; esac; case $1 in *[!A-Za-z0-9._/+-]*) return 1 ;; esac; }

check_ports() {
    for name in "$@"; do
        eval "value=\$$name"
        is_port "$value" || die "$name must be a port number 1-65535, got '$value'"
    done
}

# The deployed config with this environment's ports and paths; no other line changes.
render_config() {
    sed -e "s|^inference_address=.*|inference_address=http://127.0.0.1:$INFERENCE_PORT|" \
        -e "s|^management_address=.*|management_address=http://127.0.0.1:$MANAGEMENT_PORT|" \
        -e "s|^metrics_address=.*|metrics_address=http://127.0.0.1:$METRICS_PORT|" \
        -e "s|^grpc_inference_port=.*|grpc_inference_port=$GRPC_INFERENCE_PORT|" \
        -e "s|^grpc_management_port=.*|grpc_management_port=$GRPC_MANAGEMENT_PORT|" \
        -e "s|^initial_worker_port=.*|initial_worker_port=$WORKER_PORT|" \
        -e "s|^model_store=.*|model_store=$MODEL_STORE|" \
        -e "s|^metrics_config=.*|metrics_config=$HERE/torchserve/metrics.yaml|" \
        "$HERE/torchserve/config.properties"
}

# TorchServe's inference key (random per start, written to key_file.json in its working directory).
inference_key() {
    python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["inference"]["key"])' "$1"
}

# Hand the inference key to the pod's proxy as one nginx directive; the key's alphabet is checked so
# nothing but a token can reach the proxy's config.
publish_key() {
    key=$(inference_key "$WORKDIR/key_file.json") || return 1
    case $key in '' | *[!A-Za-z0-9_=-]*) die "unexpected characters in TorchServe's inference key" ;; esac
    umask 077
    printf 'proxy_set_header Authorization "Bearer %s";\n' "$key" > "$RUN_DIR/.$UPSTREAM_AUTH.tmp"
    mv -f "$RUN_DIR/.$UPSTREAM_AUTH.tmp" "$RUN_DIR/$UPSTREAM_AUTH"
}

serve() {
    check_ports INFERENCE_PORT MANAGEMENT_PORT METRICS_PORT GRPC_INFERENCE_PORT GRPC_MANAGEMENT_PORT WORKER_PORT
    for dir in "$MODEL_STORE" "$WORKDIR" "$RUN_DIR"; do is_path "$dir" || die "not an absolute plain path: '$dir'"; done
    ls "$MODEL_STORE"/*.mar > /dev/null 2>&1 || die "no .mar file in $MODEL_STORE"
    mkdir -p "$WORKDIR" "$RUN_DIR"
    # A restarted container keeps its emptyDirs: never serve or publish the previous instance's key.
    rm -f "$WORKDIR/key_file.json" "$WORKDIR/.model_server.pid" "$RUN_DIR/$UPSTREAM_AUTH"
    render_config > "$WORKDIR/config.properties"
    cd "$WORKDIR"
    export TMPDIR="$WORKDIR" TEMP="$WORKDIR" HOME="$WORKDIR" LOG_LOCATION="$WORKDIR/logs" \
        METRICS_LOCATION="$WORKDIR/logs" MPLCONFIGDIR="$WORKDIR/matplotlib" PYTHONDONTWRITEBYTECODE=1
    # Its own process group, so a TERM reaches the Java frontend and the Python workers together.
    setsid torchserve --start --foreground --ncs --ts-config "$WORKDIR/config.properties" \
        --model-store "$MODEL_STORE" --log-config "$HERE/torchserve/log4j2.xml" &
    ts=$!
    trap 'kill -TERM "-$ts" 2> /dev/null || true' TERM INT
    while [ ! -s "$WORKDIR/key_file.json" ]; do
        kill -0 "$ts" 2> /dev/null || break
        sleep 0.2
    done
    if [ -s "$WORKDIR/key_file.json" ]; then
        publish_key
        log "TorchServe started (pid $ts); inference key handed to the proxy"
    fi
    status=0
    wait "$ts" || status=$?
    while kill -0 "$ts" 2> /dev/null; do wait "$ts" || status=$?; done  # a trapped signal interrupts wait
    # The torchserve launcher dies at once on TERM; the Java frontend and the workers shut down after it.
    # Exiting earlier would let the container runtime kill them mid-shutdown.
    while kill -0 "-$ts" 2> /dev/null; do sleep 0.2; done
    rm -f "$RUN_DIR/$UPSTREAM_AUTH"
    log "TorchServe exited ($status)"
    exit "$status"
}

# The clients' token as nginx directives (rendered again whenever the Secret changes).
client_auth() {
    [ -r "$TOKEN_FILE" ] || die "token file $TOKEN_FILE is missing or unreadable"
    token=$(tr -d '\r\n' < "$TOKEN_FILE")
    case $token in *[!A-Za-z0-9._~+/=-]*) die "the token must be base64 or hex characters only" ;; esac
    [ "${#token}" -ge 32 ] || die "the token is shorter than 32 characters; use e.g. 'openssl rand -hex 32'"
    printf 'if ($http_authorization != "Bearer %s") {\n' "$token"
    printf '    add_header WWW-Authenticate '\''Bearer realm="camserve"'\'' always;\n'
    printf '    return 401 '\''{"code":401,"type":"Unauthorized","message":"missing or wrong bearer token"}\\n'\'';\n'
    printf '}\n'
}

# Copy what changed into the proxy's directory; true when something did.
refresh_includes() {
    changed=1
    client_auth > "$PROXY_DIR/.client-auth.conf"
    if ! cmp -s "$PROXY_DIR/.client-auth.conf" "$PROXY_DIR/client-auth.conf"; then
        mv -f "$PROXY_DIR/.client-auth.conf" "$PROXY_DIR/client-auth.conf"
        changed=0
    fi
    if [ -s "$RUN_DIR/$UPSTREAM_AUTH" ] && ! cmp -s "$RUN_DIR/$UPSTREAM_AUTH" "$PROXY_DIR/$UPSTREAM_AUTH"; then
        cp "$RUN_DIR/$UPSTREAM_AUTH" "$PROXY_DIR/.$UPSTREAM_AUTH"
        mv -f "$PROXY_DIR/.$UPSTREAM_AUTH" "$PROXY_DIR/$UPSTREAM_AUTH"
        changed=0
    fi
    return $changed
}

proxy() {
    check_ports PROXY_PORT PROXY_HEALTH_PORT PROXY_METRICS_PORT INFERENCE_PORT METRICS_PORT
    for dir in "$PROXY_DIR" "$RUN_DIR"; do is_path "$dir" || die "not an absolute plain path: '$dir'"; done
    case $PROXY_ADDRESS in *[!0-9.]*) die "CAMSERVE_PROXY_ADDRESS must be an IPv4 address" ;; esac
    umask 077
    mkdir -p "$PROXY_DIR" "$RUN_DIR"
    sed -e "s|@DIR@|$PROXY_DIR|g" -e "s|@ADDRESS@|$PROXY_ADDRESS|g" -e "s|@PROXY_PORT@|$PROXY_PORT|g" \
        -e "s|@HEALTH_PORT@|$PROXY_HEALTH_PORT|g" -e "s|@METRICS_PORT@|$PROXY_METRICS_PORT|g" \
        -e "s|@UPSTREAM_PORT@|$INFERENCE_PORT|g" -e "s|@UPSTREAM_METRICS_PORT@|$METRICS_PORT|g" \
        "$HERE/nginx/proxy.conf" > "$PROXY_DIR/nginx.conf"
    rm -f "$PROXY_DIR/$UPSTREAM_AUTH" "$PROXY_DIR/client-auth.conf"
    client_auth > /dev/null  # a bad token fails now, not once TorchServe is up
    log "waiting for TorchServe's key in $RUN_DIR"
    until [ -s "$RUN_DIR/$UPSTREAM_AUTH" ]; do sleep 0.2; done
    refresh_includes || true
    globals='daemon off;'
    if [ "$(id -u)" = 0 ]; then
        # Never so in the image (it runs as UID 10001); a rehearsal run by root keeps nginx's workers
        # under the same user as its master, as they are in the pod, instead of nginx's default 'nobody'.
        log "running as root: nginx's workers stay root"
        globals='daemon off; user root;'
    fi
    nginx -e stderr -t -q -p "$PROXY_DIR" -c "$PROXY_DIR/nginx.conf" -g "$globals"
    nginx -e stderr -p "$PROXY_DIR" -c "$PROXY_DIR/nginx.conf" -g "$globals" &
    ngx=$!
    trap 'kill -QUIT "$ngx" 2> /dev/null || true' TERM INT
    log "proxy listening on $PROXY_ADDRESS:$PROXY_PORT (health $PROXY_HEALTH_PORT, metrics $PROXY_METRICS_PORT)"
    # A restarted TorchServe publishes a new key, and the kubelet updates a rotated Secret in place:
    # pick either up with a graceful reload (nginx finishes the requests in flight).
    while kill -0 "$ngx" 2> /dev/null; do
        sleep 1 &
        wait $! || true
        if kill -0 "$ngx" 2> /dev/null && refresh_includes; then
            log "token or TorchServe key changed: reloading"
            kill -HUP "$ngx"
        fi
    done
    status=0
    wait "$ngx" || status=$?
    exit "$status"
}

health() {
    live=${1:-}
    python3 - "$WORKDIR/key_file.json" "$INFERENCE_PORT" "$live" <<'EOF'
import json, sys, urllib.error, urllib.request

key_file, port, live = sys.argv[1], sys.argv[2], sys.argv[3] == "--live"
try:
    key = json.load(open(key_file))["inference"]["key"]
    req = urllib.request.Request(f"http://127.0.0.1:{port}/ping", headers={"Authorization": f"Bearer {key}"})
    status = urllib.request.urlopen(req, timeout=4).status
except urllib.error.HTTPError as exc:
    status = exc.code
except (OSError, ValueError, KeyError) as exc:
    sys.exit(f"TorchServe not answering: {exc}")
sys.exit(0 if status == 200 or (live and status < 600) else f"TorchServe /ping answered {status}")
EOF
}

app() {
    [ -r "$TOKEN_FILE" ] || die "token file $TOKEN_FILE is missing or unreadable"
    CAMSERVE_TOKEN=$(tr -d '\r\n' < "$TOKEN_FILE")
    export CAMSERVE_TOKEN GRADIO_ANALYTICS_ENABLED=False
    exec python3 -m gradio_app "$@"
}

command=${1:-serve}
[ $# -gt 0 ] && shift
case $command in
    serve) serve ;;
    proxy) proxy ;;
    health) health "$@" ;;
    app) app "$@" ;;
    config) check_ports INFERENCE_PORT MANAGEMENT_PORT METRICS_PORT GRPC_INFERENCE_PORT GRPC_MANAGEMENT_PORT \
        WORKER_PORT && render_config ;;
    *) die "usage: entrypoint.sh serve | proxy | health [--live] | app [gradio_app flags] | config" ;;
esac
