/* pflogsumm's figures, compiled: the line loop of mailops/pflog.py (Summary.feed) in C.
 *
 * mailops/pflog.py is the reference and stays it: this file follows its feed() branch by
 * branch, and each hand-written matcher below names the regular expression of pflog.py it
 * stands for and keeps its semantics (leftmost match, greedy and lazy parts, where
 * backtracking could change a result it says why it cannot).  What is per line runs here:
 * timestamps, program and queue id, the per-queue-id state (size, where a message came from,
 * deferred ids), deliveries, senders and recipients, the figures per day and hour.  What
 * pflogsumm normalises with many regular expressions (reject reasons, cleanup's texts,
 * warnings) is kept here only as the distinct line texts with a count; mailops/pflogc.py
 * runs pflog.py's own code on each distinct text (take_rare), so those rules exist once.
 *
 * Bytes, not characters: a byte >= 0x80 is never a digit; it is a word character (for \w and
 * \b, as most non-ASCII letters are), and the UTF-8 encodings of Unicode's white space are
 * white space (for \s and \S).  Keys are bytes with ASCII letters lowered where pflog.py lowers;
 * pflogc.py decodes them and lowers the rest, merging what then becomes equal.  Lines end at
 * "\n", "\r\n" or "\r", as Python's universal newlines read them.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <unistd.h>

/* ------------------------------------------------------------------ buffers ------------ */

/* *buf holding at least n bytes (its size doubled from 1 KiB): 0, or -1 with MemoryError */
static int reserve(char **buf, size_t *cap, size_t n) {
    if (n <= *cap) return 0;
    size_t c = *cap ? *cap : 1024;
    while (c < n) c *= 2;
    char *b = realloc(*buf, c);
    if (!b) { PyErr_NoMemory(); return -1; }
    *buf = b;
    *cap = c;
    return 0;
}

/* ------------------------------------------------------------------ hash table --------- */

typedef struct {
    char *keys;                 /* every key, back to back */
    size_t keys_len, keys_cap;
    size_t *koff;
    uint32_t *klen;
    uint64_t *hash;
    char *pay;                  /* psize bytes per entry, zeroed when created */
    size_t psize;
    size_t n, cap;              /* entries */
    uint32_t *slot;             /* entry index + 1, 0 = empty */
    size_t nslot;               /* a power of two */
} Table;

static uint64_t hash_bytes(const char *p, size_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ n, w;             /* 8 bytes a step, then mixed */
    for (; n >= 8; p += 8, n -= 8) {
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdULL;
        h ^= h >> 32;
    }
    w = 0;
    memcpy(&w, p, n);
    h = (h ^ w) * 0xc4ceb9fe1a85ec53ULL;
    return h ^ (h >> 29);
}

static int tab_init(Table *t, size_t psize) {
    memset(t, 0, sizeof *t);
    t->psize = psize;
    t->nslot = 1024;
    t->slot = calloc(t->nslot, sizeof *t->slot);
    return t->slot ? 0 : -1;
}

static void tab_free(Table *t) {
    free(t->keys); free(t->koff); free(t->klen); free(t->hash); free(t->pay); free(t->slot);
    memset(t, 0, sizeof *t);
}

static void tab_clear(Table *t) {
    size_t psize = t->psize;
    tab_free(t);
    tab_init(t, psize);
}

static inline void *tab_pay(Table *t, size_t i) { return t->pay + i * t->psize; }
static inline const char *tab_key(Table *t, size_t i) { return t->keys + t->koff[i]; }

static int tab_grow_slots(Table *t) {
    size_t ns = t->nslot * 2;
    uint32_t *s = calloc(ns, sizeof *s);
    if (!s) return -1;
    for (size_t i = 0; i < t->n; i++) {
        size_t j = t->hash[i] & (ns - 1);
        while (s[j]) j = (j + 1) & (ns - 1);
        s[j] = (uint32_t)(i + 1);
    }
    free(t->slot);
    t->slot = s;
    t->nslot = ns;
    return 0;
}

/* the entry of key; created (payload zeroed) when create is set; -1 = absent, -2 = no memory */
static long tab_find(Table *t, const char *k, size_t n, int create) {
    uint64_t h = hash_bytes(k, n);
    size_t j = h & (t->nslot - 1);
    for (;;) {
        uint32_t e = t->slot[j];
        if (!e) break;
        size_t i = e - 1;
        if (t->hash[i] == h && t->klen[i] == n && memcmp(t->keys + t->koff[i], k, n) == 0)
            return (long)i;
        j = (j + 1) & (t->nslot - 1);
    }
    if (!create) return -1;
    if (t->n == t->cap) {
        size_t c = t->cap ? t->cap * 2 : 256;
        size_t *ko = realloc(t->koff, c * sizeof *ko);
        if (!ko) return -2;
        t->koff = ko;
        uint32_t *kl = realloc(t->klen, c * sizeof *kl);
        if (!kl) return -2;
        t->klen = kl;
        uint64_t *hs = realloc(t->hash, c * sizeof *hs);
        if (!hs) return -2;
        t->hash = hs;
        char *pa = realloc(t->pay, c * t->psize + 1);
        if (!pa) return -2;
        t->pay = pa;
        t->cap = c;
    }
    if (reserve(&t->keys, &t->keys_cap, t->keys_len + n) < 0) return -2;
    size_t i = t->n++;
    memcpy(t->keys + t->keys_len, k, n);
    t->koff[i] = t->keys_len;
    t->keys_len += n;
    t->klen[i] = (uint32_t)n;
    t->hash[i] = h;
    memset(tab_pay(t, i), 0, t->psize);
    t->slot[j] = (uint32_t)(i + 1);
    if (t->n * 2 > t->nslot && tab_grow_slots(t) < 0) return -2;
    return (long)i;
}

/* ------------------------------------------------------------------ characters --------- */

static inline int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
static inline int is_word(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) || c == '_' || c >= 0x80;
}

/* the length of the white-space character at p (Python's \s on str), 0 when it is none */
static size_t space_at(const unsigned char *p, const unsigned char *end) {
    unsigned char c = *p;
    if (c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f)) return 1;
    if (c < 0x80) return 0;
    size_t left = end - p;
    if (c == 0xC2 && left >= 2 && (p[1] == 0x85 || p[1] == 0xA0)) return 2;
    if (left < 3) return 0;
    if (c == 0xE1 && p[1] == 0x9A && p[2] == 0x80) return 3;                     /* U+1680 */
    if (c == 0xE2 && p[1] == 0x80 && (p[2] <= 0x8A || p[2] == 0xA8 || p[2] == 0xA9 || p[2] == 0xAF))
        return p[2] >= 0x80 ? 3 : 0;                                             /* U+2000.. */
    if (c == 0xE2 && p[1] == 0x81 && p[2] == 0x9F) return 3;                     /* U+205F */
    if (c == 0xE3 && p[1] == 0x80 && p[2] == 0x80) return 3;                     /* U+3000 */
    return 0;
}

static const char *find(const char *p, const char *end, const char *needle, size_t nl) {
    if (p >= end || (size_t)(end - p) < nl) return NULL;
    return memmem(p, end - p, needle, nl);
}

#define LIT(s) s, (sizeof(s) - 1)
static inline int starts(const char *p, const char *end, const char *s, size_t n) {
    return (size_t)(end - p) >= n && memcmp(p, s, n) == 0;
}

/* ------------------------------------------------------------------ the scanner -------- */

enum { F_RECEIVED, F_DELIVERED, F_FORWARDED, F_DEFERRED, F_DEFERRALS, F_BOUNCED, F_REJECTED,
       F_REJECT_WARNINGS, F_HELD, F_DISCARDED, F_BYTES_RECEIVED, F_BYTES_DELIVERED, F_N };
static const char *FIGURE[F_N] = {
    "received", "delivered", "forwarded", "deferred", "deferrals", "bounced", "rejected",
    "reject_warnings", "held", "discarded", "bytes_received", "bytes_delivered"};
/* reject kinds, as pflog.Summary._count names them, and the figure each counts in */
static const char *KIND[4] = {"reject", "reject_warning", "hold", "discard"};
static const int KIND_FIGURE[4] = {F_REJECTED, F_REJECT_WARNINGS, F_HELD, F_DISCARDED};
static const char *MONTH = "JanFebMarAprMayJunJulAugSepOctNovDec";

typedef struct { int64_t size; int32_t whence; uint8_t rcvd, deferred; } Qid;
typedef struct { int64_t count, bytes; } Pair;
typedef struct { int64_t count, bytes, defers; double dsum, dmax; } Recip;
typedef struct { int64_t v[5]; } Day;
typedef struct { int32_t dom; } Client;
typedef struct { int64_t count; } Count;

#define WHENCE_PICKUP (-2)

typedef struct {
    PyObject_HEAD
    int this_year, this_month;              /* month 0-11, as pflog.Summary */
    int want_year, want_month, want_day;    /* the --day filter; want_month < 0: none */
    PyObject *gimme;                        /* pflog.gimme_domain */
    int64_t n[F_N];
    int64_t hour[24][5];
    int64_t day_count;
    int last_day;
    char key[16];                           /* the day of the line before, and its entry */
    long key_entry;
    Table qids, clients, doms, days, sendg_user, sendg_dom, recip_user, recip_dom, rare;
    char *buf;                              /* scratch: keys */
    size_t buf_cap;
    char *abuf;                             /* scratch: an address, after a byte for a tag */
    size_t abuf_cap;
    char *lbuf;                             /* scratch: a line without Solaris' [ID] tag */
    size_t lbuf_cap;
    char *carry;                            /* the start of a line the next block ends */
    size_t carry_len, carry_cap;
    char *rbuf;                             /* feed_fd's read buffer */
    int failed;                             /* a Python error is set */
} Scanner;

static char *scratch(Scanner *s, size_t n) {
    if (reserve(&s->buf, &s->buf_cap, n) < 0) { s->failed = 1; return NULL; }
    return s->buf;
}

static void *entry(Scanner *s, Table *t, const char *k, size_t n) {
    long i = tab_find(t, k, n, 1);
    if (i < 0) { PyErr_NoMemory(); s->failed = 1; return NULL; }
    return tab_pay(t, (size_t)i);
}

/* pflog.gimme_domain of a client (cached per distinct client): an index into doms */
static int32_t client_domain(Scanner *s, const char *c, size_t n) {
    long i = tab_find(&s->clients, c, n, 0);
    if (i >= 0) return ((Client *)tab_pay(&s->clients, (size_t)i))->dom;
    PyObject *text = PyUnicode_DecodeUTF8(c, (Py_ssize_t)n, "replace");
    if (!text) { s->failed = 1; return -1; }
    PyObject *dom = PyObject_CallOneArg(s->gimme, text);
    Py_DECREF(text);
    if (!dom) { s->failed = 1; return -1; }
    Py_ssize_t dn;
    const char *d = PyUnicode_AsUTF8AndSize(dom, &dn);
    if (!d) { Py_DECREF(dom); s->failed = 1; return -1; }
    long di = tab_find(&s->doms, d, (size_t)dn, 1);
    Py_DECREF(dom);
    if (di < 0) { PyErr_NoMemory(); s->failed = 1; return -1; }
    Client *cl = entry(s, &s->clients, c, n);
    if (!cl) return -1;
    cl->dom = (int32_t)di;
    return (int32_t)di;
}

/* pflog._lower_domain into s->abuf + 1, ASCII letters only (pflogc.py lowers the rest);
 * s->abuf[0] is left for a tag byte; *at is the first '@' (n when none) */
static char *lower_domain(Scanner *s, const char *p, size_t n, size_t *at) {
    if (reserve(&s->abuf, &s->abuf_cap, n + 1) < 0) return NULL;
    char *b = s->abuf + 1;
    memcpy(b, p, n);
    const char *a = memchr(p, '@', n);
    *at = a ? (size_t)(a - p) : n;
    for (size_t i = *at; i < n; i++)
        if (b[i] >= 'A' && b[i] <= 'Z') b[i] = (char)(b[i] + 32);
    return b;
}

/* a key of one tag byte then text, in s->buf */
static const char *tagged(Scanner *s, char tag, const char *p, size_t n) {
    char *b = scratch(s, n + 1);
    if (!b) return NULL;
    b[0] = tag;
    memcpy(b + 1, p, n);
    return b;
}

static int count_rare(Scanner *s, char code, const char *mid, size_t mn, const char *rest, size_t rn) {
    /* key: code, mid (a reject kind or a program), NUL, the line after the host */
    char *b = scratch(s, rn + mn + 2);
    if (!b) return -1;
    b[0] = code;
    memcpy(b + 1, mid, mn);
    b[1 + mn] = 0;
    memcpy(b + 2 + mn, rest, rn);
    Count *c = entry(s, &s->rare, b, rn + mn + 2);
    if (!c) return -1;
    c->count++;
    return 0;
}

/* _CLEANUP: /cleanup\[\d+\]: .*?\b((?:milter-)?reject|warning|hold|discard): (header|body|END-OF-MESSAGE) (.*)$
 * the kind (an index into KIND) of the leftmost match, -1 when none */
static int cleanup_kind(const char *p, const char *end) {
    static const char *SUB[5] = {"milter-reject", "reject", "warning", "hold", "discard"};
    static const int SUBKIND[5] = {0, 0, 1, 2, 3};
    static const char *WHERE[3] = {"header ", "body ", "END-OF-MESSAGE "};
    const char *q = p;
    while ((q = find(q, end, LIT("/cleanup[")))) {
        const char *r = q + 9, *d = r;
        q++;
        while (r < end && is_digit((unsigned char)*r)) r++;
        if (r == d || !starts(r, end, LIT("]: "))) continue;
        /* .*? then \b: each position from here, leftmost first; the keywords start with a
         * word character, so \b is a non-word character before */
        for (const char *x = r + 3; x < end; x++) {
            if (is_word((unsigned char)x[-1])) continue;
            for (int a = 0; a < 5; a++) {
                size_t sl = strlen(SUB[a]);
                if (!starts(x, end, SUB[a], sl) || !starts(x + sl, end, LIT(": "))) continue;
                for (int w = 0; w < 3; w++)
                    if (starts(x + sl + 2, end, WHERE[w], strlen(WHERE[w]))) return SUBKIND[a];
            }
        }
    }
    return -1;
}

/* "[\d+]: \w+: " at the '[' q: the place after it, NULL when it is not there */
static const char *after_pid_word_at(const char *q, const char *end) {
    const char *r = q + 1, *d = r;
    while (r < end && is_digit((unsigned char)*r)) r++;
    if (r == d || !starts(r, end, LIT("]: "))) return NULL;
    const char *w = r += 3;
    while (r < end && is_word((unsigned char)*r)) r++;
    return r > w && starts(r, end, LIT(": ")) ? r + 2 : NULL;
}

/* _CLIENT's start, \[\d+\]: \w+: client= (leftmost): the place after it, NULL when none */
static const char *client_at(const char *p, const char *end) {
    for (const char *q = p; q < end && (q = memchr(q, '[', end - q)); q++) {
        const char *r = after_pid_word_at(q, end);
        if (r && starts(r, end, LIT("client="))) return r + 7;
    }
    return NULL;
}

/* _SMTPD_REJ: \[\d+\]: \w+: (reject(?:_warning)?|hold|discard):  (leftmost): its kind, -1 */
static int smtpd_reject_kind(const char *p, const char *end) {
    static const char *WHAT[4] = {"reject: ", "reject_warning: ", "hold: ", "discard: "};
    for (const char *q = p; q < end && (q = memchr(q, '[', end - q)); q++) {
        const char *r = after_pid_word_at(q, end);
        for (int k = 0; r && k < 4; k++)
            if (starts(r, end, WHAT[k], strlen(WHAT[k]))) return k;
    }
    return -1;
}

static double num(const char *p, size_t n) {
    /* pflog._num: float(text), 0.0 when it is not a number; plain decimals here */
    int digits = 0, dots = 0, plain = n > 0 && n < 64;
    for (size_t i = 0; plain && i < n; i++) {
        if (is_digit((unsigned char)p[i])) digits++;
        else if (p[i] == '.') dots++;
        else plain = 0;
    }
    if (plain && digits && dots <= 1) {
        char b[64];
        memcpy(b, p, n);
        b[n] = 0;
        return strtod(b, NULL);
    }
    PyObject *t = PyUnicode_DecodeUTF8(p, (Py_ssize_t)n, "replace");
    if (!t) { PyErr_Clear(); return 0.0; }
    PyObject *f = PyFloat_FromString(t);
    Py_DECREF(t);
    if (!f) { PyErr_Clear(); return 0.0; }
    double v = PyFloat_AsDouble(f);
    Py_DECREF(f);
    return v;
}

static int postfix_line(Scanner *s, const char *p, const char *end);

/* one line, without its end: Solaris' tag first (if ": [ID " in line: _ID_STUFF, that is
 * : \[ID \d+ [^\]]+\] , becomes ": " once, at its leftmost match) */
static int line(Scanner *s, const char *p, const char *end) {
    for (const char *br = p; (br = memchr(br, '[', end - br)); br++) {
        if (br - p < 2 || br[-2] != ':' || br[-1] != ' ' || !starts(br, end, LIT("[ID "))) continue;
        const char *tag = br - 2, *r = tag + 6, *d = r;
        while (r < end && is_digit((unsigned char)*r)) r++;
        if (r == d || r >= end || *r != ' ') continue;
        const char *b = memchr(r + 1, ']', end - r - 1);
        if (!b || b == r + 1 || !starts(b, end, LIT("] "))) continue;
        size_t head = tag - p + 2, tail = end - (b + 2);
        if (reserve(&s->lbuf, &s->lbuf_cap, head + tail) < 0) return -1;
        memcpy(s->lbuf, p, head);
        memcpy(s->lbuf + head, b + 2, tail);
        return postfix_line(s, s->lbuf, s->lbuf + head + tail);
    }
    return postfix_line(s, p, end);
}

static inline int not_space(const char *x, const char *end) {
    return !space_at((const unsigned char *)x, (const unsigned char *)end);
}

/* \S+ then " " then (.+)$: the rest after the host, NULL when the line does not match */
static const char *after_host(const char *r, const char *end) {
    const char *h = r;
    while (r < end && not_space(r, end)) r++;
    if (r == h || r >= end || *r != ' ' || r + 1 >= end) return NULL;
    return r + 1;
}

static int postfix_line(Scanner *s, const char *p, const char *end) {
    int year, mon = -1, day, hour;
    char key[16];
    const char *rest;
    for (int i = 0; i < 12 && end - p >= 3; i++)
        if (memcmp(p, MONTH + 3 * i, 3) == 0) { mon = i; break; }
    if (mon >= 0) {
        /* _SYSLOG: ^(\w{3}) {1,2}(\d{1,2}) (\d{2}):(\d{2}):(\d{2}) \S+ (.+)$ (a word that is no
         * month: pflog.py returns; a line starting with one cannot be RFC 3339) */
        const char *r = p + 3;
        if (r >= end || *r != ' ') return 0;
        r++;
        if (r < end && *r == ' ') r++;
        const char *d = r;
        while (r < end && is_digit((unsigned char)*r) && r - d < 3) r++;
        if (r - d < 1 || r - d > 2 || r >= end || *r != ' ') return 0;
        day = (int)(r - d == 1 ? d[0] - '0' : (d[0] - '0') * 10 + (d[1] - '0'));
        r++;
        if (end - r < 9 || !is_digit((unsigned char)r[0]) || !is_digit((unsigned char)r[1]) || r[2] != ':'
            || !is_digit((unsigned char)r[3]) || !is_digit((unsigned char)r[4]) || r[5] != ':'
            || !is_digit((unsigned char)r[6]) || !is_digit((unsigned char)r[7]) || r[8] != ' ')
            return 0;
        hour = (r[0] - '0') * 10 + (r[1] - '0');
        if (!(rest = after_host(r + 9, end))) return 0;
        year = mon > s->this_month ? s->this_year - 1 : s->this_year;
        if (s->want_month >= 0 && (mon != s->want_month || day != s->want_day)) return 0;
        key[0] = (char)('0' + year / 1000 % 10); key[1] = (char)('0' + year / 100 % 10);
        key[2] = (char)('0' + year / 10 % 10); key[3] = (char)('0' + year % 10);
        key[4] = '-'; key[5] = (char)('0' + (mon + 1) / 10); key[6] = (char)('0' + (mon + 1) % 10);
        key[7] = '-'; key[8] = (char)('0' + day / 10); key[9] = (char)('0' + day % 10);
        key[10] = 0;
    } else {
        /* _RFC3339: ^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.\d+)?(?:[+-]\d{2}:\d{2}|Z) \S+ (.+)$ */
        static const char SHAPE[] = "dddd-dd-ddTdd:dd:dd";
        if (end - p < 20) return 0;
        for (int i = 0; i < 19; i++)
            if (SHAPE[i] == 'd' ? !is_digit((unsigned char)p[i]) : p[i] != SHAPE[i]) return 0;
        const char *r = p + 19;
        if (r + 1 < end && *r == '.' && is_digit((unsigned char)r[1]))
            for (r++; r < end && is_digit((unsigned char)*r); r++) {}
        if (r < end && *r == 'Z') r++;
        else if (end - r >= 6 && (*r == '+' || *r == '-') && is_digit((unsigned char)r[1])
                 && is_digit((unsigned char)r[2]) && r[3] == ':' && is_digit((unsigned char)r[4])
                 && is_digit((unsigned char)r[5])) r += 6;
        else return 0;
        if (r >= end || *r != ' ' || !(rest = after_host(r + 1, end))) return 0;
        year = (p[0] - '0') * 1000 + (p[1] - '0') * 100 + (p[2] - '0') * 10 + (p[3] - '0');
        mon = (p[5] - '0') * 10 + (p[6] - '0') - 1;
        day = (p[8] - '0') * 10 + (p[9] - '0');
        hour = (p[11] - '0') * 10 + (p[12] - '0');
        if (s->want_month >= 0 && (year != s->want_year || mon != s->want_month || day != s->want_day))
            return 0;
        memcpy(key, p, 10);
        key[10] = 0;
    }
    if (hour > 23) return 0;               /* no such hour (pflog.py skips it too) */

    /* _CMD: ^(?:postfix)(?:/(?:smtps|submission))?/([^\[:]*).*?: ([^:\s]+)
     * _CMD2: ^((?:postfix)(?:-script)?)(?:\[\d+\])?: ([^:\s]+) */
    const char *cmd = NULL, *qid = NULL, *r;
    size_t cmdn = 0, qidn = 0;
    if (!starts(rest, end, LIT("postfix"))) return 0;
    r = rest + 7;
    if (r < end && *r == '/') {
        if (starts(r, end, LIT("/smtps/"))) r += 6;
        else if (starts(r, end, LIT("/submission/"))) r += 11;
        cmd = ++r;
        while (r < end && *r != '[' && *r != ':') r++;
        cmdn = r - cmd;
        /* the first ": " from here followed by neither ':' nor white space (a shorter cmd
         * cannot help: it holds no ':') */
        for (const char *c = r; c < end && (c = memchr(c, ':', end - c)); c++) {
            if (c + 1 >= end || c[1] != ' ') continue;
            const char *x = c + 2;
            if (x < end && *x != ':' && not_space(x, end)) {
                for (qid = x; x < end && *x != ':' && not_space(x, end); x++) {}
                qidn = x - qid;
                break;
            }
        }
    }
    if (!qid) {
        r = rest + 7;
        if (starts(r, end, LIT("-script"))) r += 7;
        cmd = rest;
        cmdn = r - rest;
        if (r < end && *r == '[') {
            const char *x = r + 1;
            while (x < end && is_digit((unsigned char)*x)) x++;
            if (x > r + 1 && x < end && *x == ']') r = x + 1;
        }
        if (!starts(r, end, LIT(": "))) return 0;
        for (qid = r += 2; r < end && *r != ':' && not_space(r, end); r++) {}
        if (!(qidn = r - qid)) return 0;
    }

    if (day != s->last_day) {
        s->last_day = day;
        s->day_count++;
    }
    if (s->key_entry < 0 || memcmp(key, s->key, 10) != 0) {
        s->key_entry = tab_find(&s->days, key, 10, 1);
        if (s->key_entry < 0) { PyErr_NoMemory(); return -1; }
        memcpy(s->key, key, 10);
    }
    Day *pd = tab_pay(&s->days, (size_t)s->key_entry);
    int64_t *ph = s->hour[hour], *n = s->n;
    size_t restn = end - rest;
#define CMD_IS(lit) (cmdn == sizeof(lit) - 1 && memcmp(cmd, lit, cmdn) == 0)
#define QID_IS(lit) (qidn == sizeof(lit) - 1 && memcmp(qid, lit, qidn) == 0)
#define REJECT(k) do { n[KIND_FIGURE[k]]++; ph[4]++; pd->v[4]++; } while (0)

    if (CMD_IS("cleanup")) {
        int k = cleanup_kind(rest, end);
        if (k >= 0) {
            REJECT(k);
            return count_rare(s, 'C', KIND[k], strlen(KIND[k]), rest, restn);
        }
    }
    if (QID_IS("warning"))
        return count_rare(s, 'W', cmd, cmdn, rest, restn);
    if (QID_IS("fatal") || QID_IS("panic")) return 0;
    for (int k = 0; k < 4; k++)
        if (qidn == strlen(KIND[k]) && memcmp(qid, KIND[k], qidn) == 0) {
            REJECT(k);
            return count_rare(s, 'R', KIND[k], strlen(KIND[k]), rest, restn);
        }
    if (CMD_IS("master")) return 0;
    if (CMD_IS("smtpd") || CMD_IS("postscreen")) {
        /* _CLIENT: \[\d+\]: \w+: client=(.+?)(,|$) */
        const char *c = client_at(rest, end);
        if (c && c < end) {
            const char *comma = memchr(c + 1, ',', end - c - 1);
            int32_t dom = client_domain(s, c, (comma ? comma : end) - c);
            if (dom == -1) return -1;
            n[F_RECEIVED]++; ph[0]++; pd->v[0]++;
            Qid *q = entry(s, &s->qids, qid, qidn);
            if (!q) return -1;
            q->rcvd = 1;
            q->whence = dom;
            return 0;
        }
        int k = smtpd_reject_kind(rest, end);
        if (k >= 0) {
            REJECT(k);
            return count_rare(s, 'R', KIND[k], strlen(KIND[k]), rest, restn);
        }
        return 0;
    }

    /* _FROM: from=<([^>]*)>, size=(\d+) (leftmost) */
    for (const char *lt = rest; lt < end && (lt = memchr(lt, '<', end - lt)); lt++) {
        if (lt - rest < 5 || memcmp(lt - 5, "from=", 5) != 0) continue;
        const char *a = lt + 1, *gt = memchr(a, '>', end - a);
        if (!gt || !starts(gt, end, LIT(">, size=")) || gt + 8 >= end || !is_digit((unsigned char)gt[8]))
            continue;
        int64_t size = 0;
        for (const char *x = gt + 8; x < end && is_digit((unsigned char)*x); x++) size = size * 10 + (*x - '0');
        long qi = tab_find(&s->qids, qid, qidn, 0);
        if (qi >= 0 && ((Qid *)tab_pay(&s->qids, (size_t)qi))->size) return 0;
        Qid *q = entry(s, &s->qids, qid, qidn);
        if (!q) return -1;
        q->size = size;
        int had = q->rcvd;
        int32_t whence = q->whence;
        q->rcvd = 0;
        if (!had || (whence != WHENCE_PICKUP && s->doms.klen[whence] == 0)) return 0;  /* "" is false */
        size_t an = gt - a, at = 0;
        const char *addr = "from=<>";
        if (an) {
            if (!(addr = lower_domain(s, a, an, &at))) return -1;
        } else {
            an = at = 7;
        }
        /* the sender's domain: after the first '@' (^[^@]+@.+$; tag A: pflogc.py lowers it),
         * else the address itself for pickup (tag U), else the client's host/domain (tag W) */
        const char *k;
        size_t kn;
        if (at > 0 && at + 1 < an) { k = tagged(s, 'A', addr + at + 1, an - at - 1); kn = an - at; }
        else if (whence == WHENCE_PICKUP) { k = tagged(s, 'U', addr, an); kn = an + 1; }
        else {
            kn = s->doms.klen[whence] + 1;
            k = tagged(s, 'W', tab_key(&s->doms, (size_t)whence), kn - 1);
        }
        Pair *sd = k ? entry(s, &s->sendg_dom, k, kn) : NULL;
        if (!sd) return -1;
        sd->count++;
        sd->bytes += size;
        Pair *su = entry(s, &s->sendg_user, addr, an);
        if (!su) return -1;
        su->count++;
        su->bytes += size;
        n[F_BYTES_RECEIVED] += size;
        return 0;
    }

    /* _TO: to=<([^>]*)>, (?:orig_to=<[^>]*>, )?relay=([^,]+), (?:conn_use=[^,]+, )?delay=([^,]+),
     * (?:delays=[^,]+, )?(?:dsn=[^,]+, )?status=(\S+)(.*)$  (leftmost; each optional part starts
     * with a word the part after it cannot start with, so taking it when it matches decides) */
    for (const char *lt = rest; lt < end && (lt = memchr(lt, '<', end - lt)); lt++) {
        if (lt - rest < 3 || memcmp(lt - 3, "to=", 3) != 0) continue;
        const char *a = lt + 1, *gt = memchr(a, '>', end - a);
        if (!gt || !starts(gt, end, LIT(">, "))) continue;
        const char *x = gt + 3, *c, *ds = NULL, *de = NULL;
        if (starts(x, end, LIT("orig_to=<")) && (c = memchr(x + 9, '>', end - x - 9))
            && starts(c, end, LIT(">, "))) x = c + 3;
        int ok = 1;
#define FIELD(lit, must, s_, e_)                                                           \
        do { size_t l_ = sizeof(lit) - 1;                                                  \
             if (starts(x, end, lit, l_) && x + l_ < end && (c = memchr(x + l_, ',', end - x - l_)) \
                 && c > x + l_ && starts(c, end, LIT(", "))) { s_ = x + l_; e_ = c; x = c + 2; } \
             else if (must) ok = 0; } while (0)
        const char *ign_s, *ign_e;
        FIELD("relay=", 1, ign_s, ign_e);
        if (!ok) continue;
        FIELD("conn_use=", 0, ign_s, ign_e);
        FIELD("delay=", 1, ds, de);
        if (!ok) continue;
        FIELD("delays=", 0, ign_s, ign_e);
        FIELD("dsn=", 0, ign_s, ign_e);
#undef FIELD
        (void)ign_s; (void)ign_e;
        if (!starts(x, end, LIT("status="))) continue;
        const char *st = x + 7, *se = st;
        while (se < end && not_space(se, end)) se++;
        if (se == st) continue;
        size_t stn = se - st, an = gt - a, at;
        char *addr = lower_domain(s, a, an, &at);
        if (!addr) return -1;
        /* the domain, re.sub(r"^[^@]+@", "", addr): tag L (pflogc.py lowers it) or D (an address) */
        const char *dk = (at > 0 && at < an) ? tagged(s, 'L', addr + at + 1, an - at - 1)
                                             : tagged(s, 'D', addr, an);
        size_t dkn = (at > 0 && at < an) ? an - at : an + 1;
        if (!dk) return -1;
        double delay = num(ds, de - ds);
#define STATUS_IS(lit) (stn == sizeof(lit) - 1 && memcmp(st, lit, stn) == 0)
        if (STATUS_IS("sent")) {
            if (find(se, end, LIT("forwarded as "))) { n[F_FORWARDED]++; return 0; }
            long qi = tab_find(&s->qids, qid, qidn, 0);
            int64_t size = qi >= 0 ? ((Qid *)tab_pay(&s->qids, (size_t)qi))->size : 0;
            Recip *rd = entry(s, &s->recip_dom, dk, dkn);
            if (!rd) return -1;
            rd->count++;
            rd->bytes += size;
            rd->dsum += delay;
            if (delay > rd->dmax) rd->dmax = delay;
            Pair *ru = entry(s, &s->recip_user, addr, an);
            if (!ru) return -1;
            ru->count++;
            ru->bytes += size;
            ph[1]++; pd->v[1]++;
            n[F_DELIVERED]++;
            n[F_BYTES_DELIVERED] += size;
        } else if (STATUS_IS("deferred")) {
            ph[2]++; pd->v[2]++;
            n[F_DEFERRALS]++;
            Qid *q = entry(s, &s->qids, qid, qidn);
            if (!q) return -1;
            if (!q->deferred) { q->deferred = 1; n[F_DEFERRED]++; }
            Recip *rd = entry(s, &s->recip_dom, dk, dkn);
            if (!rd) return -1;
            rd->defers++;
            if (delay > rd->dmax) rd->dmax = delay;
        } else if (STATUS_IS("bounced")) {
            ph[3]++; pd->v[3]++;
            n[F_BOUNCED]++;
        }
#undef STATUS_IS
        return 0;
    }

    /* pickup: _PICKUP, that is ": (sender|uid)=" */
    if (CMD_IS("pickup") && (find(rest, end, LIT(": sender=")) || find(rest, end, LIT(": uid=")))) {
        n[F_RECEIVED]++; ph[0]++; pd->v[0]++;
        Qid *q = entry(s, &s->qids, qid, qidn);
        if (!q) return -1;
        q->rcvd = 1;
        q->whence = WHENCE_PICKUP;
    }
    return 0;
#undef CMD_IS
#undef QID_IS
#undef REJECT
}

/* ------------------------------------------------------------------ the Python type ---- */

static int Scanner_init(Scanner *s, PyObject *args, PyObject *kw) {
    static char *names[] = {"this_year", "this_month", "day", "gimme_domain", NULL};
    PyObject *want = Py_None, *gimme;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iiOO", names, &s->this_year, &s->this_month,
                                     &want, &gimme))
        return -1;
    s->want_month = -1;
    if (want != Py_None && !PyArg_ParseTuple(want, "iii", &s->want_year, &s->want_month, &s->want_day))
        return -1;
    if (want != Py_None) s->want_month -= 1;
    Py_XSETREF(s->gimme, Py_NewRef(gimme));
    s->last_day = -1;
    s->key_entry = -1;
    Table *ts[] = {&s->qids, &s->clients, &s->doms, &s->days, &s->sendg_user, &s->sendg_dom,
                   &s->recip_user, &s->recip_dom, &s->rare};
    size_t ps[] = {sizeof(Qid), sizeof(Client), 1, sizeof(Day), sizeof(Pair), sizeof(Pair),
                   sizeof(Pair), sizeof(Recip), sizeof(Count)};
    for (int i = 0; i < 9; i++) {
        tab_free(ts[i]);
        if (tab_init(ts[i], ps[i]) < 0) { PyErr_NoMemory(); return -1; }
    }
    return 0;
}

static void Scanner_dealloc(Scanner *s) {
    Table *ts[] = {&s->qids, &s->clients, &s->doms, &s->days, &s->sendg_user, &s->sendg_dom,
                   &s->recip_user, &s->recip_dom, &s->rare};
    for (int i = 0; i < 9; i++) tab_free(ts[i]);
    free(s->buf); free(s->abuf); free(s->lbuf); free(s->carry); free(s->rbuf);
    Py_XDECREF(s->gimme);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

/* the end of the line starting at p: the first "\n" or "\r", end when none */
static const char *line_end(const char *p, const char *end) {
    const char *nl = memchr(p, '\n', end - p);
    const char *cr = memchr(p, '\r', (nl ? nl : end) - p);
    return cr ? cr : nl ? nl : end;
}

static int carry_add(Scanner *s, const char *p, size_t n) {
    if (reserve(&s->carry, &s->carry_cap, s->carry_len + n) < 0) return -1;
    memcpy(s->carry + s->carry_len, p, n);
    s->carry_len += n;
    return 0;
}

/* any bytes of the log, in order: whole lines are counted, a line's start is kept.  "\r\n"
 * needs nothing of its own: an empty line counts nothing, as in pflog.py */
static int feed_bytes(Scanner *s, const char *p, const char *end) {
    if (s->carry_len && p < end) {
        const char *e = line_end(p, end);
        if (carry_add(s, p, e - p) < 0) return -1;
        if (e == end) return 0;
        int rc = line(s, s->carry, s->carry + s->carry_len);
        s->carry_len = 0;
        if (rc < 0 || s->failed) return -1;
        p = e + 1;
    }
    while (p < end) {
        const char *e = line_end(p, end);
        if (e == end) return carry_add(s, p, e - p);
        if (e > p && (line(s, p, e) < 0 || s->failed)) return -1;
        p = e + 1;
    }
    return 0;
}

static PyObject *failed(Scanner *s) {
    s->failed = 1;
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_RuntimeError, "mailops._pflogc: failed");
    return NULL;
}

static int ready(Scanner *s) {
    if (!s->gimme) { PyErr_SetString(PyExc_RuntimeError, "Scanner not initialised"); return 0; }
    if (s->failed) { PyErr_SetString(PyExc_RuntimeError, "Scanner failed before"); return 0; }
    return 1;
}

static PyObject *Scanner_feed(Scanner *s, PyObject *arg) {
    Py_buffer view;
    if (!ready(s) || PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    int rc = feed_bytes(s, view.buf, (const char *)view.buf + view.len);
    PyBuffer_Release(&view);
    if (rc < 0) return failed(s);
    Py_RETURN_NONE;
}

/* read an open file, up to limit bytes (no copies through Python); the bytes read, 0 at
 * its end */
static PyObject *Scanner_feed_fd(Scanner *s, PyObject *args) {
    PyObject *file;
    long long limit = 64LL << 20, done = 0;
    if (!PyArg_ParseTuple(args, "O|L", &file, &limit)) return NULL;
    int fd = PyObject_AsFileDescriptor(file);
    if (fd < 0 || !ready(s)) return NULL;
    enum { SIZE = 1 << 20 };
    if (!s->rbuf && !(s->rbuf = malloc(SIZE))) return PyErr_NoMemory();
    while (done < limit) {
        ssize_t got;
        Py_BEGIN_ALLOW_THREADS
        got = read(fd, s->rbuf, (size_t)(limit - done < SIZE ? limit - done : SIZE));
        Py_END_ALLOW_THREADS
        if (got < 0) {
            if (errno == EINTR) { if (PyErr_CheckSignals() < 0) return NULL; continue; }
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        if (got == 0) break;
        done += got;
        if (feed_bytes(s, s->rbuf, s->rbuf + got) < 0) return failed(s);
    }
    return PyLong_FromLongLong(done);
}

/* the end of the input: its last line, when it has no end of line */
static PyObject *Scanner_finish(Scanner *s, PyObject *unused) {
    if (!ready(s)) return NULL;
    if (s->carry_len) {
        int rc = line(s, s->carry, s->carry + s->carry_len);
        s->carry_len = 0;
        if (rc < 0 || s->failed) return failed(s);
    }
    Py_RETURN_NONE;
}

static PyObject *Scanner_rare_count(Scanner *s, PyObject *unused) {
    return PyLong_FromSize_t(s->rare.n);
}

/* {key: value} of a table; value made by conv from the payload */
static PyObject *table_dict(Table *t, PyObject *(*conv)(void *)) {
    PyObject *d = PyDict_New();
    if (!d) return NULL;
    for (size_t i = 0; i < t->n; i++) {
        PyObject *k = PyBytes_FromStringAndSize(tab_key(t, i), t->klen[i]);
        PyObject *v = k ? conv(tab_pay(t, i)) : NULL;
        if (!v || PyDict_SetItem(d, k, v) < 0) { Py_XDECREF(k); Py_XDECREF(v); Py_DECREF(d); return NULL; }
        Py_DECREF(k);
        Py_DECREF(v);
    }
    return d;
}

static PyObject *conv_count(void *p) { return PyLong_FromLongLong(((Count *)p)->count); }
static PyObject *conv_pair(void *p) {
    Pair *x = p;
    return Py_BuildValue("[LL]", (long long)x->count, (long long)x->bytes);
}
static PyObject *conv_recip(void *p) {
    Recip *x = p;
    return Py_BuildValue("[LLLdd]", (long long)x->count, (long long)x->bytes, (long long)x->defers,
                         x->dsum, x->dmax);
}
static PyObject *conv_day(void *p) {
    Day *x = p;
    return Py_BuildValue("[LLLLL]", (long long)x->v[0], (long long)x->v[1], (long long)x->v[2],
                         (long long)x->v[3], (long long)x->v[4]);
}

/* the distinct rare lines counted so far, {key: count}, and forget them */
static PyObject *Scanner_take_rare(Scanner *s, PyObject *unused) {
    PyObject *d = table_dict(&s->rare, conv_count);
    if (d) tab_clear(&s->rare);
    return d;
}

static PyObject *Scanner_result(Scanner *s, PyObject *unused) {
    PyObject *n = PyDict_New(), *hours = PyList_New(24), *out = NULL;
    if (!n || !hours) goto done;
    for (int i = 0; i < F_N; i++) {
        PyObject *v = PyLong_FromLongLong(s->n[i]);
        if (!v || PyDict_SetItemString(n, FIGURE[i], v) < 0) { Py_XDECREF(v); goto done; }
        Py_DECREF(v);
    }
    for (int h = 0; h < 24; h++) {
        PyObject *row = conv_day(s->hour[h]);
        if (!row) goto done;
        PyList_SET_ITEM(hours, h, row);
    }
    out = Py_BuildValue("{sOsOsLsNsNsNsN}", "n", n, "per_hour", hours,
                        "day_count", (long long)s->day_count,
                        "per_day", table_dict(&s->days, conv_day),
                        "sendg_user", table_dict(&s->sendg_user, conv_pair),
                        "sendg_dom", table_dict(&s->sendg_dom, conv_pair),
                        "recip_user", table_dict(&s->recip_user, conv_pair));
    if (out) {
        PyObject *rd = table_dict(&s->recip_dom, conv_recip);
        if (!rd || PyDict_SetItemString(out, "recip_dom", rd) < 0) Py_CLEAR(out);
        Py_XDECREF(rd);
    }
done:
    Py_XDECREF(n);
    Py_XDECREF(hours);
    return out;
}

static PyMethodDef Scanner_methods[] = {
    {"feed", (PyCFunction)Scanner_feed, METH_O, "feed(bytes): the log's next bytes"},
    {"feed_fd", (PyCFunction)Scanner_feed_fd, METH_VARARGS,
     "feed_fd(file or fd, limit=64 MiB): read on, at most limit bytes; the bytes read (0: the end)"},
    {"finish", (PyCFunction)Scanner_finish, METH_NOARGS, "the last line, when it has no end"},
    {"rare_count", (PyCFunction)Scanner_rare_count, METH_NOARGS,
     "the number of distinct reject, cleanup and warning lines kept"},
    {"take_rare", (PyCFunction)Scanner_take_rare, METH_NOARGS,
     "{kind byte + (reject kind or program) + NUL + line after the host: count}, then forget them"},
    {"result", (PyCFunction)Scanner_result, METH_NOARGS, "the figures and tables, keys as bytes"},
    {NULL, NULL, 0, NULL}};

static PyTypeObject ScannerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mailops._pflogc.Scanner",
    .tp_basicsize = sizeof(Scanner),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Scanner(this_year, this_month, day, gimme_domain): pflog.Summary.feed's loop in C",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Scanner_init,
    .tp_dealloc = (destructor)Scanner_dealloc,
    .tp_methods = Scanner_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_pflogc",
    .m_doc = "pflogsumm's figures: the line loop, compiled",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__pflogc(void) {
    if (PyType_Ready(&ScannerType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (PyModule_AddObjectRef(m, "Scanner", (PyObject *)&ScannerType) < 0) { Py_DECREF(m); return NULL; }
    return m;
}
