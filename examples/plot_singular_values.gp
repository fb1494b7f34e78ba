# Plots the CSV written by svd_vs_newton_schulz: singular value against its
# index (both axes logarithmic), the input and every method's output.
#   gnuplot -e "csv='singular_values.csv'; png='singular_values.png'" examples/plot_singular_values.gp
# Columns: index, input, then one per method (names from the header row).
if (!exists("csv")) csv = 'singular_values.csv'
if (!exists("png")) png = 'singular_values.png'

set datafile separator ','
set terminal pngcairo size 1100,700 font ',11'
set output png
set title 'Singular values before and after orthogonalization'
set xlabel 'index i (descending order)'
set ylabel 'singular value σ_i'
set logscale xy
set autoscale xfix
set format y '10^{%L}'
set grid xtics ytics mxtics mytics lc rgb '#dddddd'
set key outside right top box
set yrange [*:3]

# Column names from the header row; the last column (the exact polar factor) is dashed.
names = system(sprintf("head -n 1 '%s' | tr ',_' ' -'", csv))
ncols = words(names)

plot for [c = 2:ncols - 1] csv skip 1 using 1:c with lines lw (c == 2 ? 3 : 2) title word(names, c), \
     csv skip 1 using 1:ncols with lines lw 2 dashtype 2 lc rgb 'black' title word(names, ncols)
