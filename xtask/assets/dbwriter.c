/* qsnap-dbwriter DB LOCKFILE: the test guest's database writer.
 *
 * Keeps one SQLite connection open in WAL mode and commits a numbered row every
 * 2 ms, each commit under an exclusive flock(2) of LOCKFILE. The fsfreeze hook takes
 * that lock to hold the writer back while it checkpoints the WAL and the filesystem
 * is frozen. Because the connection stays open, the WAL is only emptied by a
 * checkpoint: an image taken without the hook shows a non-empty WAL. */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <fcntl.h>
#include <unistd.h>

static void die(sqlite3 *db, const char *what) {
    fprintf(stderr, "qsnap-dbwriter: %s: %s\n", what, db ? sqlite3_errmsg(db) : "?");
    exit(1);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: qsnap-dbwriter DB LOCKFILE\n");
        return 2;
    }
    int lock = open(argv[2], O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (lock < 0) { perror("qsnap-dbwriter: lock file"); return 1; }
    sqlite3 *db = NULL;
    if (sqlite3_open(argv[1], &db) != SQLITE_OK) die(db, "open");
    sqlite3_busy_timeout(db, 60000);
    if (sqlite3_exec(db,
            "PRAGMA journal_mode=WAL;"
            "CREATE TABLE IF NOT EXISTS rows(n INTEGER PRIMARY KEY, at REAL NOT NULL);",
            NULL, NULL, NULL) != SQLITE_OK)
        die(db, "setup");
    sqlite3_stmt *last = NULL, *insert = NULL;
    if (sqlite3_prepare_v2(db, "SELECT coalesce(max(n), 0) FROM rows", -1, &last, NULL) != SQLITE_OK)
        die(db, "prepare");
    if (sqlite3_step(last) != SQLITE_ROW) die(db, "last row");
    sqlite3_int64 n = sqlite3_column_int64(last, 0);
    sqlite3_finalize(last);
    if (sqlite3_prepare_v2(db, "INSERT INTO rows(n, at) VALUES(?, julianday('now'))", -1,
                           &insert, NULL) != SQLITE_OK)
        die(db, "prepare");
    fprintf(stderr, "qsnap-dbwriter: started after row %lld\n", (long long)n);
    for (;;) {
        n++;
        if (flock(lock, LOCK_EX) != 0) { perror("qsnap-dbwriter: flock"); return 1; }
        sqlite3_bind_int64(insert, 1, n);
        if (sqlite3_step(insert) != SQLITE_DONE) die(db, "insert");
        sqlite3_reset(insert);
        flock(lock, LOCK_UN);
        usleep(2000);
    }
}
