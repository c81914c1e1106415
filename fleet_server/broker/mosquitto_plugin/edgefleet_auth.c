/*
 * edgefleet_auth: a Mosquitto 2.0 plugin (v5 API) that asks the fleet server who may connect.
 *
 * Why: Mosquitto's dynamic-security plugin rewrites its whole JSON file after every command,
 * so an enrollment costs the broker O(fleet size). With this plugin the broker holds no device
 * accounts at all: enrolling a device is a registry row on the fleet server, nothing here.
 *
 *   MOSQ_EVT_BASIC_AUTH  one HTTP POST to the server's broker-auth endpoint
 *                        (plugin_opt_url, e.g. http://fleet:8080/api/v1/broker/auth) with
 *                        {"username", "password", "clientid"}; "result":"allow" lets the client
 *                        in and remembers its grant (a device id, or the server's account).
 *                        Server unreachable, timeout or any other answer: refused. Clients
 *                        already connected stay (their ACL checks need no HTTP).
 *   MOSQ_EVT_ACL_CHECK   decided here from the remembered grant, no HTTP per message: a device
 *                        publishes only edgefleet/v1/devices/<its id>/{reported,events,telemetry}
 *                        and reads/subscribes only .../<its id>/{desired,commands}, with its client
 *                        id equal to its device id; the server's account everything under
 *                        edgefleet/v1/ (and $share/edgefleet/edgefleet/v1/...). The same rules as
 *                        fleet_server/broker/access.py.
 *   MOSQ_EVT_CONTROL     $CONTROL/edgefleet-auth/v1, the server's account only:
 *                        {"commands":[{"command":"kickDevice","username":U,"correlationData":C}]}
 *                        forgets U's grant and closes its live sessions
 *                        (mosquitto_kick_client_by_username); the answer goes to
 *                        $CONTROL/edgefleet-auth/v1/response as the dynamic-security plugin's do.
 *
 * Options (mosquitto.conf, after "plugin PATH/edgefleet_auth.so"):
 *   plugin_opt_url         the endpoint (http or https)                       required
 *   plugin_opt_token       the bearer token (broker_auth_token on the server) or
 *   plugin_opt_token_file  a file holding it (keeps the secret out of mosquitto.conf)
 *   plugin_opt_timeout_ms  per HTTP call, default 2000: Mosquitto is single-threaded, so a
 *                          server that does not answer stalls the broker this long per CONNECT
 *   plugin_opt_cafile      CA bundle for an https URL (default: the system's)
 *
 * What it does not do: cache passwords (every CONNECT asks the server, which keeps its own short
 * cache of verifications), or forget grants of clients that disconnect (one small entry per
 * username that ever connected; replaced at its next login, dropped by kickDevice).
 *
 * Build (the broker host: gcc, mosquitto-dev, libmosquitto-dev, libcurl4-openssl-dev):
 *   python -m fleet_server.broker.plugin build --out DIR
 */
#include <ctype.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#define PREFIX "edgefleet/v1/"
#define DEVICES PREFIX "devices/"
#define SHARE "$share/edgefleet/"
#define CONTROL_TOPIC "$CONTROL/edgefleet-auth/v1"
#define RESPONSE_TOPIC CONTROL_TOPIC "/response"
#define BUCKETS 8192
#define MAX_ANSWER 4096
#define MAX_FIELD 256

struct grant {
	char *username;
	char *device_id; /* NULL: the server's account */
	struct grant *next;
};

struct answer {
	char data[MAX_ANSWER];
	size_t len;
};

static mosquitto_plugin_id_t *plugin_id;
static struct grant *grants[BUCKETS];
static CURL *curl;
static struct curl_slist *headers;
static char *auth_url;
static char *cafile;
static long timeout_ms = 2000;

/* ------------------------------------------------------------------ grants */

static uint32_t hash(const char *s)
{
	uint32_t h = 2166136261u; /* FNV-1a */
	while(*s){
		h ^= (uint8_t)*s++;
		h *= 16777619u;
	}
	return h % BUCKETS;
}

static struct grant *grant_find(const char *username)
{
	struct grant *g;
	if(!username) return NULL;
	for(g = grants[hash(username)]; g; g = g->next){
		if(!strcmp(g->username, username)) return g;
	}
	return NULL;
}

static void grant_free(struct grant *g)
{
	mosquitto_free(g->username);
	mosquitto_free(g->device_id);
	mosquitto_free(g);
}

static bool grant_forget(const char *username)
{
	struct grant **link = &grants[hash(username)];
	while(*link){
		if(!strcmp((*link)->username, username)){
			struct grant *gone = *link;
			*link = gone->next;
			grant_free(gone);
			return true;
		}
		link = &(*link)->next;
	}
	return false;
}

static int grant_set(const char *username, const char *device_id)
{
	struct grant *g = mosquitto_calloc(1, sizeof(*g));
	if(!g) return MOSQ_ERR_NOMEM;
	g->username = mosquitto_strdup(username);
	g->device_id = device_id ? mosquitto_strdup(device_id) : NULL;
	if(!g->username || (device_id && !g->device_id)){
		grant_free(g);
		return MOSQ_ERR_NOMEM;
	}
	grant_forget(username);
	uint32_t h = hash(username);
	g->next = grants[h];
	grants[h] = g;
	return MOSQ_ERR_SUCCESS;
}

/* ------------------------------------------------------------------ the rules (as access.py) */

static bool is_kind(const char *kind, const char *const *kinds)
{
	for(; *kinds; kinds++){
		if(!strcmp(kind, *kinds)) return true;
	}
	return false;
}

static const char *const TO_SERVER[] = {"reported", "events", "telemetry", NULL};
static const char *const TO_DEVICE[] = {"desired", "commands", NULL};

static bool device_allowed(const char *device_id, const char *topic, int access)
{
	size_t n = strlen(DEVICES), id_len = strlen(device_id);
	if(access == MOSQ_ACL_UNSUBSCRIBE) return true;
	if(strncmp(topic, DEVICES, n) || strncmp(topic + n, device_id, id_len) || topic[n + id_len] != '/'){
		return false;
	}
	const char *kind = topic + n + id_len + 1;
	if(access == MOSQ_ACL_WRITE) return is_kind(kind, TO_SERVER);
	if(access == MOSQ_ACL_READ || access == MOSQ_ACL_SUBSCRIBE) return is_kind(kind, TO_DEVICE);
	return false;
}

static bool server_allowed(const char *topic, int access)
{
	if(access == MOSQ_ACL_UNSUBSCRIBE) return true;
	if(!strncmp(topic, PREFIX, strlen(PREFIX))) return true;
	if(access == MOSQ_ACL_SUBSCRIBE && !strncmp(topic, SHARE PREFIX, strlen(SHARE PREFIX))) return true;
	/* its own control topic and the answers to it */
	if(access == MOSQ_ACL_WRITE && !strcmp(topic, CONTROL_TOPIC)) return true;
	if((access == MOSQ_ACL_READ || access == MOSQ_ACL_SUBSCRIBE) && !strcmp(topic, RESPONSE_TOPIC)) return true;
	return false;
}

/* ------------------------------------------------------------------ tiny JSON helpers */

/* Append s as a JSON string; false when it does not fit. */
static bool json_string(char *out, size_t size, size_t *pos, const char *s)
{
	if(*pos + 1 >= size) return false;
	out[(*pos)++] = '"';
	for(; *s; s++){
		unsigned char c = (unsigned char)*s;
		char esc[8];
		size_t len;
		if(c == '"' || c == '\\'){
			esc[0] = '\\'; esc[1] = (char)c; len = 2;
		}else if(c < 0x20){
			snprintf(esc, sizeof(esc), "\\u%04x", c); len = 6;
		}else{
			esc[0] = (char)c; len = 1;
		}
		if(*pos + len + 1 >= size) return false;
		memcpy(out + *pos, esc, len);
		*pos += len;
	}
	if(*pos + 1 >= size) return false;
	out[(*pos)++] = '"';
	out[*pos] = '\0';
	return true;
}

static bool append(char *out, size_t size, size_t *pos, const char *s)
{
	size_t len = strlen(s);
	if(*pos + len + 1 >= size) return false;
	memcpy(out + *pos, s, len + 1);
	*pos += len;
	return true;
}

/* The value after "key": (whitespace skipped), or NULL. Our own server writes these bodies;
 * a value holding a backslash is refused rather than unescaped. */
static const char *json_value(const char *doc, const char *key)
{
	char quoted[64];
	snprintf(quoted, sizeof(quoted), "\"%s\"", key);
	const char *p = strstr(doc, quoted);
	if(!p) return NULL;
	p += strlen(quoted);
	while(isspace((unsigned char)*p)) p++;
	if(*p != ':') return NULL;
	p++;
	while(isspace((unsigned char)*p)) p++;
	return p;
}

static bool json_get_string(const char *doc, const char *key, char *out, size_t size)
{
	const char *p = json_value(doc, key);
	if(!p || *p != '"') return false;
	p++;
	size_t i = 0;
	while(*p && *p != '"'){
		if(*p == '\\' || i + 1 >= size) return false;
		out[i++] = *p++;
	}
	if(*p != '"') return false;
	out[i] = '\0';
	return true;
}

/* ------------------------------------------------------------------ the HTTP call */

static size_t collect(char *data, size_t size, size_t nmemb, void *userdata)
{
	struct answer *a = userdata;
	size_t n = size * nmemb;
	if(a->len + n >= sizeof(a->data)) return 0; /* too long: not one of our answers */
	memcpy(a->data + a->len, data, n);
	a->len += n;
	a->data[a->len] = '\0';
	return n;
}

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *ed = event_data;
	const char *clientid = mosquitto_client_id(ed->client);
	char body[1024];
	size_t pos = 0;
	struct answer answer = {.len = 0};
	long status = 0;
	(void)event;
	(void)userdata;

	if(!ed->username || !ed->password || !clientid) return MOSQ_ERR_AUTH;
	if(!append(body, sizeof(body), &pos, "{\"username\":") || !json_string(body, sizeof(body), &pos, ed->username)
			|| !append(body, sizeof(body), &pos, ",\"password\":") || !json_string(body, sizeof(body), &pos, ed->password)
			|| !append(body, sizeof(body), &pos, ",\"clientid\":") || !json_string(body, sizeof(body), &pos, clientid)
			|| !append(body, sizeof(body), &pos, "}")){
		return MOSQ_ERR_AUTH; /* longer than any login we hand out */
	}

	answer.data[0] = '\0';
	curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, (long)pos);
	curl_easy_setopt(curl, CURLOPT_WRITEDATA, &answer);
	CURLcode rc = curl_easy_perform(curl);
	memset(body, 0, sizeof(body)); /* the password */
	if(rc != CURLE_OK){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "edgefleet-auth: refused %s: the fleet server at %s did not answer: %s",
				ed->username, auth_url, curl_easy_strerror(rc));
		return MOSQ_ERR_AUTH;
	}
	curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
	char result[16], device_id[MAX_FIELD];
	if(status != 200 || !json_get_string(answer.data, "result", result, sizeof(result))){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "edgefleet-auth: refused %s: the fleet server answered HTTP %ld",
				ed->username, status);
		return MOSQ_ERR_AUTH;
	}
	if(strcmp(result, "allow")) return MOSQ_ERR_AUTH;
	const char *superuser = json_value(answer.data, "is_superuser");
	bool server = superuser && !strncmp(superuser, "true", 4);
	if(!server && !json_get_string(answer.data, "device_id", device_id, sizeof(device_id))){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "edgefleet-auth: refused %s: an allow without a device id", ed->username);
		return MOSQ_ERR_AUTH;
	}
	if(!server && strcmp(device_id, clientid)) return MOSQ_ERR_AUTH; /* the server checked it too */
	return grant_set(ed->username, server ? NULL : device_id) == MOSQ_ERR_SUCCESS ? MOSQ_ERR_SUCCESS : MOSQ_ERR_AUTH;
}

/* ------------------------------------------------------------------ ACL and control */

static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	struct grant *g = grant_find(mosquitto_client_username(ed->client));
	(void)event;
	(void)userdata;
	if(!g || !ed->topic) return MOSQ_ERR_ACL_DENIED;
	if(!g->device_id) return server_allowed(ed->topic, ed->access) ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
	const char *clientid = mosquitto_client_id(ed->client);
	if(!clientid || strcmp(clientid, g->device_id)) return MOSQ_ERR_ACL_DENIED;
	return device_allowed(g->device_id, ed->topic, ed->access) ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
}

static void respond(struct mosquitto *client, const char *command, const char *correlation, const char *error)
{
	char out[1024];
	size_t pos = 0;
	if(!append(out, sizeof(out), &pos, "{\"responses\":[{\"command\":") || !json_string(out, sizeof(out), &pos, command)
			|| (correlation[0] && (!append(out, sizeof(out), &pos, ",\"correlationData\":")
					|| !json_string(out, sizeof(out), &pos, correlation)))
			|| (error && (!append(out, sizeof(out), &pos, ",\"error\":") || !json_string(out, sizeof(out), &pos, error)))
			|| !append(out, sizeof(out), &pos, ",\"data\":{}}]}")){
		return;
	}
	mosquitto_broker_publish_copy(mosquitto_client_id(client), RESPONSE_TOPIC, (int)pos, out, 1, false, NULL);
}

static int on_control(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_control *ed = event_data;
	const char *username = mosquitto_client_username(ed->client);
	struct grant *g = grant_find(username);
	char doc[2048], command[64] = "", target[MAX_FIELD], correlation[128] = "";
	(void)event;
	(void)userdata;

	if(!g || g->device_id){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "edgefleet-auth: %s may not use %s", username ? username : "(anonymous)",
				CONTROL_TOPIC);
		return MOSQ_ERR_ACL_DENIED;
	}
	if(ed->payloadlen >= sizeof(doc)){
		respond(ed->client, "unknown", "", "payload too large");
		return MOSQ_ERR_SUCCESS;
	}
	memcpy(doc, ed->payload, ed->payloadlen);
	doc[ed->payloadlen] = '\0';
	json_get_string(doc, "correlationData", correlation, sizeof(correlation));
	if(!json_get_string(doc, "command", command, sizeof(command)) || strcmp(command, "kickDevice")){
		respond(ed->client, command[0] ? command : "unknown", correlation, "Unknown command");
		return MOSQ_ERR_SUCCESS;
	}
	if(!json_get_string(doc, "username", target, sizeof(target)) || !target[0]){
		respond(ed->client, command, correlation, "Invalid/missing username");
		return MOSQ_ERR_SUCCESS;
	}
	grant_forget(target);
	/* with_will: the device's last will marks it offline, as if it had dropped. */
	mosquitto_kick_client_by_username(target, true);
	mosquitto_log_printf(MOSQ_LOG_NOTICE, "edgefleet-auth: %s revoked, its sessions closed", target);
	respond(ed->client, command, correlation, NULL);
	return MOSQ_ERR_SUCCESS;
}

/* ------------------------------------------------------------------ plugin entry points */

static char *read_token_file(const char *path)
{
	char buf[512];
	FILE *f = fopen(path, "r");
	if(!f) return NULL;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	while(n && isspace((unsigned char)buf[n - 1])) buf[--n] = '\0';
	return n ? mosquitto_strdup(buf) : NULL;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for(int i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata, struct mosquitto_opt *options,
		int option_count)
{
	char *token = NULL;
	(void)userdata;
	plugin_id = identifier;
	for(int i = 0; i < option_count; i++){
		if(!strcmp(options[i].key, "url")){
			auth_url = mosquitto_strdup(options[i].value);
		}else if(!strcmp(options[i].key, "token")){
			mosquitto_free(token);
			token = mosquitto_strdup(options[i].value);
		}else if(!strcmp(options[i].key, "token_file")){
			mosquitto_free(token);
			token = read_token_file(options[i].value);
			if(!token){
				mosquitto_log_printf(MOSQ_LOG_ERR, "edgefleet-auth: cannot read a token from %s", options[i].value);
				return MOSQ_ERR_INVAL;
			}
		}else if(!strcmp(options[i].key, "timeout_ms")){
			timeout_ms = strtol(options[i].value, NULL, 10);
		}else if(!strcmp(options[i].key, "cafile")){
			cafile = mosquitto_strdup(options[i].value);
		}
	}
	if(!auth_url || !token || timeout_ms <= 0){
		mosquitto_log_printf(MOSQ_LOG_ERR, "edgefleet-auth: needs plugin_opt_url and plugin_opt_token (or "
				"plugin_opt_token_file), and a positive plugin_opt_timeout_ms");
		mosquitto_free(token);
		return MOSQ_ERR_INVAL;
	}
	if(curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK || !(curl = curl_easy_init())){
		mosquitto_free(token);
		return MOSQ_ERR_UNKNOWN;
	}
	size_t header_len = strlen(token) + 32;
	char *authorization = mosquitto_malloc(header_len);
	if(!authorization){
		mosquitto_free(token);
		return MOSQ_ERR_NOMEM;
	}
	snprintf(authorization, header_len, "Authorization: Bearer %s", token);
	headers = curl_slist_append(NULL, "Content-Type: application/json");
	headers = curl_slist_append(headers, authorization);
	memset(authorization, 0, header_len);
	mosquitto_free(authorization);
	memset(token, 0, strlen(token));
	mosquitto_free(token);
	/* One handle for every call: it keeps the connection to the server open (keep-alive). */
	curl_easy_setopt(curl, CURLOPT_URL, auth_url);
	curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, timeout_ms);
	curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms);
	curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L); /* no SIGALRM inside the broker */
	curl_easy_setopt(curl, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, collect);
#if LIBCURL_VERSION_NUM >= 0x075500
	curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
#else
	curl_easy_setopt(curl, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
	if(cafile) curl_easy_setopt(curl, CURLOPT_CAINFO, cafile);

	int rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, NULL);
	if(rc == MOSQ_ERR_SUCCESS) rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL);
	if(rc == MOSQ_ERR_SUCCESS) rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_CONTROL, on_control, CONTROL_TOPIC, NULL);
	if(rc == MOSQ_ERR_SUCCESS){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "edgefleet-auth: asking %s (timeout %ld ms)", auth_url, timeout_ms);
	}
	return rc;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;
	if(plugin_id){
		mosquitto_callback_unregister(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
		mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
		mosquitto_callback_unregister(plugin_id, MOSQ_EVT_CONTROL, on_control, CONTROL_TOPIC);
	}
	for(int i = 0; i < BUCKETS; i++){
		while(grants[i]){
			struct grant *g = grants[i];
			grants[i] = g->next;
			grant_free(g);
		}
	}
	if(curl) curl_easy_cleanup(curl);
	curl = NULL;
	curl_slist_free_all(headers);
	headers = NULL;
	mosquitto_free(auth_url);
	mosquitto_free(cafile);
	auth_url = cafile = NULL;
	curl_global_cleanup();
	return MOSQ_ERR_SUCCESS;
}
